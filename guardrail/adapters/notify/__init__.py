"""Notifiers (the ``Notifier`` port), registered in the ``guardrail.notifiers`` entry point group:
``alertmanager``, ``pagerduty``, ``slack``, ``webhook``.

Shared conventions:

* ``send()`` makes one attempt, with its own ``timeout_s``, and never raises for a failed delivery.
  Retrying is the outbox dispatcher's job (:mod:`guardrail.service.notify`): it keeps a page and
  retries it with capped backoff until it is delivered, across restarts.
* A 2xx answer is a delivery. A 429, a 5xx, a timeout or a connection error is ``retryable``; any
  other answer (a 4xx, a redirect: redirects are not followed) is not: the request itself is wrong
  and sending it again would get the same answer. A ``Retry-After`` (seconds or an HTTP-date, as
  Slack sends with a 429) is passed on in ``retry_after_s``; the outbox waits at least that long.
  The classification is the outbound seam's (:mod:`guardrail.adapters.outbound`).
* ``NotifyResult.detail`` is one line: ``POST <url> -> <status> in <s> s: <start of the answer>``.
  Secret config values are redacted from it (a Slack webhook URL is shown by its host only), so it
  can go to logs and to the outbox's ``last_error``.
* Each notifier takes an injected ``aiohttp.ClientSession`` (or makes its own, closed by ``close()``)
  and a ``clock`` (wall time, for the few timestamps a notice does not carry).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, TypeVar

from yarl import URL

from guardrail.adapters.outbound import Exchange, Outbound
from guardrail.domain.errors import ConfigError
from guardrail.domain.notifications import Link, Notice, Severity
from guardrail.plugins import load_plugin, parse_config
from guardrail.ports import Notifier, NotifyResult, Store
from guardrail.service.notify import DispatchSettings, NotificationService, Route
from guardrail.telemetry import Telemetry

if TYPE_CHECKING:  # guardrail.config imports the judge (scipy): loading a notifier should not
    from guardrail.config import NotificationsConfig

NOTIFIERS = "guardrail.notifiers"

C = TypeVar("C")

_TOKEN_CHARS = set("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_READ_LIMIT = 4096  # bytes of an answer read (the rest is dropped)
_SHOWN_BODY = 300  # characters of an answer shown in a detail

__all__ = [
    "NOTIFIERS",
    "HttpClient",
    "Posted",
    "build_notification_service",
    "build_notifiers",
    "check_headers",
    "check_http_url",
    "check_timeout",
    "fallback_summary",
    "first_http_link",
    "freeze_mappings",
    "jsonable",
    "load_notifier",
    "parse_notifier_config",
    "rfc3339",
    "shorten",
    "stable_digest",
]


def parse_notifier_config(config_type: type[C], config: Mapping[str, Any] | None, *, name: str) -> C:
    """Validate a notifier's raw config; errors name ``notifier.config.<key>``."""
    return parse_config(config_type, config, field_prefix="notifier.config", owner=f"{name} notifier")


def load_notifier(name: str, config: Mapping[str, Any] | None = None) -> Notifier:
    """The notifier registered as ``name`` (``alertmanager``, ``pagerduty``, ``slack``, ``webhook``)."""
    notifier = load_plugin(NOTIFIERS, name, config)
    if not isinstance(notifier, Notifier):
        raise ConfigError(
            f"notifier.name: plugin {name!r} does not implement Notifier (name, send, close)",
            field="notifier.name",
        )
    return notifier


# --- config checks ---------------------------------------------------------------------------------


def freeze_mappings(config: Any, *names: str) -> None:
    """In a frozen config's ``__post_init__``: keep the named mappings as read-only copies."""
    for name in names:
        object.__setattr__(config, name, MappingProxyType(dict(getattr(config, name))))


def check_http_url(value: str, key: str, *, secret: bool = False) -> URL:
    """An absolute http(s) URL without credentials; the message quotes the value unless ``secret``."""
    shown = "" if secret else f", got {value!r}"
    try:
        url = URL(value)
    except (ValueError, TypeError):
        raise ConfigError(f"must be an absolute http:// or https:// URL{shown}", field=key) from None
    if url.scheme not in ("http", "https") or not url.host:
        raise ConfigError(f"must be an absolute http:// or https:// URL{shown}", field=key)
    if url.user is not None or url.password is not None:
        raise ConfigError("must not carry credentials (user:password@); use secret_headers", field=key)
    return url


def check_headers(key: str, headers: Mapping[str, str], *, secret: bool, reserved: Sequence[str]) -> None:
    for name, value in headers.items():
        if not name or not set(name) <= _TOKEN_CHARS:
            raise ConfigError(f"{name!r} is not a valid HTTP header name", field=f"{key}.{name}")
        if name.lower() in reserved:
            raise ConfigError(
                f"header {name} is set by guardrail and cannot be configured", field=f"{key}.{name}"
            )
        if any(c in value for c in "\r\n\0"):
            shown = "the value" if secret else repr(value)
            raise ConfigError(f"{shown} contains a line break or NUL", field=f"{key}.{name}")


def check_timeout(timeout_s: float) -> None:
    if not timeout_s > 0:
        raise ConfigError(f"must be a number of seconds > 0, got {timeout_s}", field="timeout_s")


# --- rendering -------------------------------------------------------------------------------------


def rfc3339(t: float) -> str:
    """Unix seconds as RFC 3339 UTC with milliseconds: ``2024-05-01T10:00:00.000Z``."""
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def jsonable(o: Any) -> Any:
    """``o`` as strict JSON can hold it: non-finite floats become ``"inf"``, ``"-inf"``, ``"nan"``
    (verdicts carry unbounded intervals), tuples lists, keys strings, anything else its ``str``."""
    if isinstance(o, bool) or o is None or isinstance(o, int | str):
        return o
    if isinstance(o, float):
        if math.isfinite(o):
            return o
        return "nan" if math.isnan(o) else ("inf" if o > 0 else "-inf")
    if isinstance(o, Mapping):
        return {str(k): jsonable(v) for k, v in o.items()}
    if isinstance(o, list | tuple | set | frozenset):
        return [jsonable(v) for v in o]
    return str(o)


def shorten(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters, ending in an ellipsis when cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def stable_digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def first_http_link(links: Sequence[Link]) -> str | None:
    """The first link that is an absolute http(s) URL (servers reject anything else)."""
    for link in links:
        try:
            url = URL(link.href)
        except (ValueError, TypeError):
            continue
        if url.scheme in ("http", "https") and url.host:
            return link.href
    return None


def fallback_summary(notice: Notice) -> str:
    return notice.summary.strip() or f"{notice.rule or 'guardrail'}: {notice.service}.{notice.environment}"


# --- HTTP ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Posted(Exchange):
    """What one POST got: the status (None when no answer came), the start of the answer (one line,
    secrets redacted), a one-line outcome and whether trying again later could succeed."""


class HttpClient(Outbound):
    """One POST with a timeout and a classified answer, for the notifiers. The session is injected
    or made on first use (and then closed by :meth:`close`)."""

    async def post(self, url: str | URL, body: bytes, headers: Mapping[str, str]) -> Posted:
        return await self.exchange(
            "POST", url, data=body, headers=headers, read_limit=_READ_LIMIT, flatten=True, kind=Posted
        )

    def result(self, what: str, posted: Posted, *, ok: bool | None = None, why: str = "") -> NotifyResult:
        """The NotifyResult of ``posted`` (``ok`` overrides the 2xx rule, ``why`` explains a refusal)."""
        delivered = posted.ok if ok is None else ok
        detail = f"{what} -> {posted.outcome}"
        if not delivered:
            tail = why or posted.body
            if tail:
                detail += f": {shorten(tail, _SHOWN_BODY)}"
            if not posted.retryable:
                detail += " (not retried)"
        if not delivered and posted.retry_after_s is not None:
            detail += f" (the server asks to wait {posted.retry_after_s:g} s)"
        return NotifyResult(
            ok=delivered,
            retryable=not delivered and posted.retryable,
            detail=self.redact(detail),
            retry_after_s=posted.retry_after_s if not delivered else None,
        )


# --- building the service from settings ------------------------------------------------------------


def build_notifiers(
    config: NotificationsConfig, *, factory: Callable[[str, Mapping[str, Any]], Notifier] = load_notifier
) -> dict[str, Notifier]:
    """One notifier per ``notifications.notifiers`` entry; errors name
    ``notifications.notifiers.<name>.type`` or ``...<name>.config.<key>``."""
    built: dict[str, Notifier] = {}
    for name, preset in config.notifiers.items():
        where = f"notifications.notifiers.{name}"
        try:
            built[name] = factory(preset.type, preset.config)
        except ConfigError as e:
            field = e.field or "notifier"
            if field.startswith("notifier.config"):
                field = f"{where}.config{field[len('notifier.config') :]}"
                detail = e.detail.replace("notifier.config", f"{where}.config", 1)
            else:
                field = f"{where}.type"
                detail = e.detail.replace("notifier.name", field, 1)
            raise ConfigError(detail, field=field) from None
    return built


def build_notification_service(
    config: NotificationsConfig,
    *,
    store: Store,
    clock: Callable[[], float] = time.time,
    telemetry: Telemetry | None = None,
    factory: Callable[[str, Mapping[str, Any]], Notifier] = load_notifier,
) -> NotificationService:
    """The NotificationService the ``notifications:`` settings describe (no I/O)."""
    notifiers = build_notifiers(config, factory=factory)
    routes = [Route(Severity(r.severity), tuple(r.notifiers)) for r in config.routes]
    settings = DispatchSettings(
        poll_s=config.poll_s,
        backoff_s=config.backoff_s,
        backoff_max_s=config.backoff_max_s,
        lease_s=config.lease_s,
        batch=config.batch,
    )
    return NotificationService(store, notifiers, routes, clock=clock, telemetry=telemetry, settings=settings)
