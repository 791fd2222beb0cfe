"""Page through PagerDuty Events API v2: trigger and resolve with a stable ``dedup_key``.

Trigger (``POST url``, default ``https://events.pagerduty.com/v2/enqueue``)::

    {"routing_key": ..., "event_action": "trigger", "dedup_key": notice.key,
     "payload": {"summary": <= 1024 chars, "source": "<service>.<environment>",
                 "severity": "critical" (page) | "warning" (ticket) | "info",
                 "timestamp": occurred_at, "component": service, "class": rule,
                 "custom_details": details (+ "description": text)},
     "links": [{"href": ..., "text": ...}], "client": "guardrail"}

Resolve: ``{"routing_key", "event_action": "resolve", "dedup_key"}``. The ``dedup_key`` is the
incident key (a key longer than PagerDuty's 255 characters is cut and suffixed with its SHA-256, so
it stays stable and unique). PagerDuty de-duplicates on it too: a repeated trigger of an open
incident does not page twice. An announcement becomes a change event (``POST change_url``, default
``https://events.pagerduty.com/v2/change/enqueue``), which shows on the service's timeline without
paging anyone.

PagerDuty answers 202; 400 for an invalid event (not retried); 429 and 5xx are retried.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Self

import aiohttp

from guardrail.adapters.notify import (
    HttpClient,
    check_http_url,
    check_timeout,
    fallback_summary,
    jsonable,
    parse_notifier_config,
    rfc3339,
    shorten,
    stable_digest,
)
from guardrail.domain.errors import ConfigError
from guardrail.domain.notifications import Notice, NoticeAction, Severity
from guardrail.ports import NotifyResult
from guardrail.secrets import secret_field, secret_values

EVENTS_URL = "https://events.pagerduty.com/v2/enqueue"
CHANGE_URL = "https://events.pagerduty.com/v2/change/enqueue"
MAX_DEDUP_KEY = 255
MAX_SUMMARY = 1024
SEVERITIES = {Severity.PAGE: "critical", Severity.TICKET: "warning", Severity.INFO: "info"}


@dataclass(frozen=True, slots=True)
class PagerDutyConfig:
    routing_key: str = secret_field()  # the integration key of the service (Events API v2)
    url: str = EVENTS_URL
    change_url: str = CHANGE_URL  # announcements go here as change events
    timeout_s: float = 10.0  # per attempt

    def __post_init__(self) -> None:
        if not self.routing_key.strip() or any(c.isspace() for c in self.routing_key):
            raise ConfigError("must be a non-empty integration key without spaces", field="routing_key")
        check_http_url(self.url, "url")
        check_http_url(self.change_url, "change_url")
        check_timeout(self.timeout_s)


def dedup_key(key: str) -> str:
    """``key`` itself when it fits PagerDuty's 255 characters, else a stable cut with its digest."""
    if len(key) <= MAX_DEDUP_KEY:
        return key
    digest = stable_digest(key)
    return key[: MAX_DEDUP_KEY - len(digest) - 1] + "#" + digest


class PagerDutyNotifier:
    name = "pagerduty"
    config_type: ClassVar[type[PagerDutyConfig]] = PagerDutyConfig

    def __init__(
        self,
        config: PagerDutyConfig,
        *,
        session: aiohttp.ClientSession | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self._clock = clock
        self._http = HttpClient(session=session, timeout_s=config.timeout_s, secrets=secret_values(config))

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Self:
        return cls(parse_notifier_config(PagerDutyConfig, config, name="pagerduty"))

    def __repr__(self) -> str:
        return f"PagerDutyNotifier({self.config!r})"

    async def close(self) -> None:
        await self._http.close()

    def _details(self, notice: Notice) -> dict[str, Any]:
        details = dict(notice.details)
        if notice.text:
            details.setdefault("description", notice.text)
        if notice.deploy_id:
            details.setdefault("deploy_id", notice.deploy_id)
        return jsonable(details)

    def _links(self, notice: Notice) -> list[dict[str, str]]:
        return [{"href": link.href, "text": link.text} for link in notice.links]

    def event(self, notice: Notice) -> dict[str, Any]:
        """The Events v2 body for a trigger or a resolve."""
        key = dedup_key(notice.key)
        if notice.action is NoticeAction.RESOLVE:
            return {"routing_key": self.config.routing_key, "event_action": "resolve", "dedup_key": key}
        return {
            "routing_key": self.config.routing_key,
            "event_action": "trigger",
            "dedup_key": key,
            "payload": {
                "summary": shorten(fallback_summary(notice), MAX_SUMMARY),
                "source": f"{notice.service}.{notice.environment}",
                "severity": SEVERITIES[notice.severity],
                "timestamp": rfc3339(notice.occurred_at or self._clock()),
                "component": notice.service,
                "class": notice.rule,
                "custom_details": self._details(notice),
            },
            "links": self._links(notice),
            "client": "guardrail",
        }

    def change_event(self, notice: Notice) -> dict[str, Any]:
        """The Change Events body for an announcement."""
        return {
            "routing_key": self.config.routing_key,
            "payload": {
                "summary": shorten(fallback_summary(notice), MAX_SUMMARY),
                "source": f"{notice.service}.{notice.environment}",
                "timestamp": rfc3339(notice.occurred_at or self._clock()),
                "custom_details": self._details(notice),
            },
            "links": self._links(notice),
        }

    async def send(self, notice: Notice) -> NotifyResult:
        if notice.action is NoticeAction.ANNOUNCE:
            url, doc = self.config.change_url, self.change_event(notice)
        else:
            url, doc = self.config.url, self.event(notice)
        body = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()
        posted = await self._http.post(url, body, {"Content-Type": "application/json"})
        return self._http.result(f"POST {url} ({doc.get('event_action', 'change')})", posted)
