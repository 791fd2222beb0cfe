"""POST each notice as JSON to any HTTP endpoint, signed with HMAC-SHA256.

Body (``Content-Type: application/json``)::

    {"version": 1, "delivery_id": 42, "key": ..., "action": "trigger" | "resolve" | "announce",
     "severity": "page" | "ticket" | "info", "summary": ..., "service": ..., "environment": ...,
     "deploy_id": ..., "rule": ..., "details": {...}, "links": [{"href": ..., "text": ...}],
     "text": ..., "occurred_at": "2024-05-01T10:00:00.000Z"}

Headers: ``Idempotency-Key: <outbox id>`` (the same on every retry and after a restart, so a
receiver can drop repeats; outside the dispatcher, a digest of the notice), and, when ``secret`` is
set, ``X-Guardrail-Signature: sha256=<hex HMAC-SHA256 of the exact body bytes>``. Non-finite
numbers in ``details`` are sent as the strings ``"inf"``, ``"-inf"``, ``"nan"``. The URL's query
string is left out of details (put tokens in ``secret_headers``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

import aiohttp
from yarl import URL

from guardrail.adapters.notify import (
    HttpClient,
    check_headers,
    check_http_url,
    check_timeout,
    freeze_mappings,
    jsonable,
    parse_notifier_config,
    rfc3339,
    stable_digest,
)
from guardrail.domain.errors import ConfigError
from guardrail.domain.notifications import Notice
from guardrail.ports import NotifyResult
from guardrail.secrets import secret_field, secret_values
from guardrail.service.notify import DELIVERY_ID

SIGNATURE_HEADER = "X-Guardrail-Signature"
IDEMPOTENCY_HEADER = "Idempotency-Key"
_RESERVED_HEADERS = ("content-type", "content-length", "host", "idempotency-key", SIGNATURE_HEADER.lower())


@dataclass(frozen=True, slots=True)
class WebhookNotifierConfig:
    url: str
    secret: str | None = secret_field(default=None)  # HMAC-SHA256 key for X-Guardrail-Signature
    timeout_s: float = 10.0  # per attempt
    headers: Mapping[str, str] = field(default_factory=dict)
    secret_headers: Mapping[str, str] = secret_field(default_factory=dict)  # e.g. Authorization

    def __post_init__(self) -> None:
        freeze_mappings(self, "headers", "secret_headers")
        check_http_url(self.url, "url")
        check_timeout(self.timeout_s)
        if self.secret is not None and not self.secret:
            raise ConfigError("must not be empty (leave it out to send unsigned requests)", field="secret")
        check_headers("headers", self.headers, secret=False, reserved=_RESERVED_HEADERS)
        check_headers("secret_headers", self.secret_headers, secret=True, reserved=_RESERVED_HEADERS)
        both = {h.lower() for h in self.headers} & {h.lower() for h in self.secret_headers}
        if both:
            raise ConfigError(
                f"header(s) {', '.join(sorted(both))} also set in headers", field="secret_headers"
            )


def sign(secret: str, body: bytes) -> str:
    """The ``X-Guardrail-Signature`` value for ``body``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(secret: str, body: bytes, signature: str) -> bool:
    """For receivers: is ``signature`` the header value guardrail sends for ``body``?"""
    return hmac.compare_digest(sign(secret, body), signature)


class WebhookNotifier:
    name = "webhook"
    config_type: ClassVar[type[WebhookNotifierConfig]] = WebhookNotifierConfig

    def __init__(
        self,
        config: WebhookNotifierConfig,
        *,
        session: aiohttp.ClientSession | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self._clock = clock
        self._http = HttpClient(session=session, timeout_s=config.timeout_s, secrets=secret_values(config))
        self._shown = str(URL(config.url).with_query(None).with_fragment(None))

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Self:
        return cls(parse_notifier_config(WebhookNotifierConfig, config, name="webhook"))

    def __repr__(self) -> str:
        return f"WebhookNotifier({self.config!r})"

    async def close(self) -> None:
        await self._http.close()

    def document(self, notice: Notice, delivery_id: int | None) -> dict[str, Any]:
        return {
            "version": 1,
            "delivery_id": delivery_id,
            "key": notice.key,
            "action": notice.action.value,
            "severity": notice.severity.value,
            "summary": notice.summary,
            "service": notice.service,
            "environment": notice.environment,
            "deploy_id": notice.deploy_id,
            "rule": notice.rule,
            "details": jsonable(notice.details),
            "links": [{"href": link.href, "text": link.text} for link in notice.links],
            "text": notice.text,
            "occurred_at": rfc3339(notice.occurred_at or self._clock()),
        }

    async def send(self, notice: Notice) -> NotifyResult:
        delivery_id = DELIVERY_ID.get()
        body = json.dumps(
            self.document(notice, delivery_id), separators=(",", ":"), ensure_ascii=False
        ).encode()
        if delivery_id is not None:
            idempotency_key = str(delivery_id)
        else:
            idempotency_key = (
                "notice-" + stable_digest(notice.key, notice.action.value, repr(notice.occurred_at))[:32]
            )
        headers = {
            **self.config.headers,
            **self.config.secret_headers,
            "Content-Type": "application/json",
            IDEMPOTENCY_HEADER: idempotency_key,
        }
        if self.config.secret:
            headers[SIGNATURE_HEADER] = sign(self.config.secret, body)
        posted = await self._http.post(self.config.url, body, headers)
        return self._http.result(f"POST {self._shown}", posted)
