"""Send incidents to Alertmanager (API v2), which routes, groups and silences them like any alert.

``POST {url}/api/v2/alerts`` with one alert::

    [{"labels": {"alertname": rule, "service": ..., "environment": ..., "severity": "page",
                 "deploy": deploy_id, "origin": "guardrail", **labels},
      "annotations": {"summary": ..., "description": text, "runbook_url": details["runbook_url"]},
      "startsAt": occurred_at, "endsAt": occurred_at + firing_for_s, "generatorURL": first link}]

``origin="guardrail"`` is on every alert and cannot be configured away: when Alertmanager routes
the alert back to guardrail's ``/hooks/alertmanager`` (a catch-all route does), the hook recognises
it as guardrail's own and never lets it judge a deploy (no loop, whatever the routing). Route on it
too, to keep guardrail's alerts off the guardrail receiver. The labels come from the incident's
trigger notice only (a resolve notice is built from it), so a
trigger and its resolve are the same alert. A trigger carries an explicit ``endsAt``
(``firing_for_s`` ahead, 24 h by default): without one Alertmanager would resolve the alert by
itself after its ``resolve_timeout`` (5 minutes) while the incident is still open. A resolve
re-posts the labels with ``endsAt`` = the time of the resolve (now) and no ``startsAt``, so
Alertmanager keeps the original start. Announcements are not alerts: they are refused (not
retryable); route severity ``info`` to Slack or a webhook.

Alertmanager answers 200, or 400 for an alert it rejects. Headers (e.g. ``Authorization`` for an
Alertmanager behind a proxy) go in ``headers`` / ``secret_headers``.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

import aiohttp

from guardrail.adapters.notify import (
    HttpClient,
    check_headers,
    check_http_url,
    check_timeout,
    fallback_summary,
    first_http_link,
    freeze_mappings,
    parse_notifier_config,
    rfc3339,
)
from guardrail.domain.errors import ConfigError
from guardrail.domain.notifications import Notice, NoticeAction
from guardrail.ports import NotifyResult
from guardrail.secrets import secret_field, secret_values

_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
ORIGIN_LABEL, ORIGIN = "origin", "guardrail"  # on every alert guardrail posts; the hook drops them
_OWN_LABELS = ("alertname", "service", "environment", "severity", "deploy", ORIGIN_LABEL)
_RESERVED_HEADERS = ("content-type", "content-length", "host")


@dataclass(frozen=True, slots=True)
class AlertmanagerConfig:
    url: str  # base URL, e.g. http://alertmanager:9093 (posts go to {url}/api/v2/alerts)
    timeout_s: float = 10.0  # per attempt
    firing_for_s: float = 86400.0  # endsAt of a firing alert, after its start (guardrail resolves earlier)
    labels: Mapping[str, str] = field(default_factory=dict)  # static extra labels, e.g. team: payments
    headers: Mapping[str, str] = field(default_factory=dict)
    secret_headers: Mapping[str, str] = secret_field(default_factory=dict)  # e.g. Authorization

    def __post_init__(self) -> None:
        freeze_mappings(self, "labels", "headers", "secret_headers")
        url = check_http_url(self.url, "url")
        if url.query_string:
            raise ConfigError("must not have a query string (the API path is appended)", field="url")
        check_timeout(self.timeout_s)
        if not self.firing_for_s >= 60:
            raise ConfigError(f"must be at least 60 seconds, got {self.firing_for_s}", field="firing_for_s")
        for name in self.labels:
            if not _LABEL_NAME.match(name):
                raise ConfigError(
                    f"{name!r} is not a valid label name ([a-zA-Z_][a-zA-Z0-9_]*)", field=f"labels.{name}"
                )
            if name in _OWN_LABELS:
                raise ConfigError(f"label {name} is set by guardrail from the notice", field=f"labels.{name}")
        check_headers("headers", self.headers, secret=False, reserved=_RESERVED_HEADERS)
        check_headers("secret_headers", self.secret_headers, secret=True, reserved=_RESERVED_HEADERS)


class AlertmanagerNotifier:
    name = "alertmanager"
    config_type: ClassVar[type[AlertmanagerConfig]] = AlertmanagerConfig

    def __init__(
        self,
        config: AlertmanagerConfig,
        *,
        session: aiohttp.ClientSession | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self._clock = clock
        self._http = HttpClient(session=session, timeout_s=config.timeout_s, secrets=secret_values(config))
        self.alerts_url = config.url.rstrip("/") + "/api/v2/alerts"

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Self:
        return cls(parse_notifier_config(AlertmanagerConfig, config, name="alertmanager"))

    def __repr__(self) -> str:
        return f"AlertmanagerNotifier({self.config!r})"

    async def close(self) -> None:
        await self._http.close()

    def labels(self, notice: Notice) -> dict[str, str]:
        """The alert's identity: the same for every notice of one incident."""
        labels = {
            **self.config.labels,
            "alertname": notice.rule or "GuardrailNotice",
            "service": notice.service,
            "environment": notice.environment,
            "severity": notice.severity.value,
            ORIGIN_LABEL: ORIGIN,
        }
        if notice.deploy_id:
            labels["deploy"] = notice.deploy_id
        return labels

    def alert(self, notice: Notice) -> dict[str, Any]:
        now = self._clock()
        at = notice.occurred_at or now
        annotations = {"summary": fallback_summary(notice)}
        if notice.text:
            annotations["description"] = notice.text
        runbook = notice.details.get("runbook_url")
        if isinstance(runbook, str) and runbook:
            annotations["runbook_url"] = runbook
        alert: dict[str, Any] = {"labels": self.labels(notice), "annotations": annotations}
        if notice.action is NoticeAction.RESOLVE:
            alert["endsAt"] = rfc3339(min(at, now))
        else:
            alert["startsAt"] = rfc3339(at)
            alert["endsAt"] = rfc3339(at + self.config.firing_for_s)
        link = first_http_link(notice.links)
        if link is not None:
            alert["generatorURL"] = link
        return alert

    async def send(self, notice: Notice) -> NotifyResult:
        what = f"POST {self.alerts_url}"
        if notice.action is NoticeAction.ANNOUNCE:
            return NotifyResult(
                ok=False,
                retryable=False,
                detail="Alertmanager takes alerts, not announcements: route severity info to slack or webhook",
            )
        body = json.dumps([self.alert(notice)], separators=(",", ":"), ensure_ascii=False).encode()
        headers = {**self.config.headers, **self.config.secret_headers, "Content-Type": "application/json"}
        posted = await self._http.post(self.alerts_url, body, headers)
        return self._http.result(what, posted)
