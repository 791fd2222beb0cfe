"""A small JSON-over-HTTP client shared by the deploy adapters that talk to an API (Kubernetes,
GitHub), on the outbound seam (:mod:`guardrail.adapters.outbound`): one call = up to
``retries + 1`` attempts, each with its own timeout, all within the call's deadline.

Retried, by the seam's one policy: no answer (connection refused or reset, timeout), 429, 5xx, and
whatever the provider's rate-limit hook says (GitHub's rate-limited 403 / 429), waiting capped
exponential backoff with jitter or the server's ``Retry-After`` / rate-limit reset when longer. Not
retried: a TLS verification failure and any other answer. Redirects are not followed. The body is
read whole (at most 16 MiB), parsed as JSON, and kept for the record redacted first and then cut to
``OUTPUT_LIMIT`` characters.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import string
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from yarl import URL

from guardrail.adapters.outbound import Outbound, RateLimitHook, RetryPolicy
from guardrail.domain.errors import ConfigError
from guardrail.retry import Backoff

OUTPUT_LIMIT = 4000  # characters of a response body kept for the record

_NO_BODY = object()


@dataclass(frozen=True, slots=True)
class Reply:
    """What one call got: the last attempt's answer (``status`` None when there was none)."""

    method: str
    path: str
    status: int | None
    json: Any = None  # the parsed body, None when empty or not JSON
    text: str = ""  # the body, secrets redacted, at most OUTPUT_LIMIT characters
    error: str = ""  # why there was no answer (redacted)
    attempts: int = 1
    history: list[str] = field(default_factory=list)
    retryable: bool = False  # trying again later could succeed
    retry_after_s: float | None = None  # the server's (or its rate limit's) requested wait

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    def outcome(self) -> str:
        """One line: ``PATCH /x -> 404 in 0.01 s (attempt 1)`` or ``GET /x -> timed out after 5 s ...``."""
        what = self.error if self.status is None else (self.history[-1] if self.history else str(self.status))
        return f"{self.method} {self.path} -> {what} (attempt {self.attempts})"

    def message(self) -> str:
        """The server's own explanation, if its body has one (Kubernetes Status, GitHub error)."""
        doc = self.json if isinstance(self.json, dict) else {}
        parts = [str(doc.get("message") or "").strip()]
        for err in doc.get("errors") or []:  # GitHub validation errors
            if isinstance(err, dict):
                parts.append(str(err.get("message") or err.get("code") or "").strip())
            elif isinstance(err, str):
                parts.append(err.strip())
        text = "; ".join(p for p in parts if p)
        return " ".join(text.split())[:300]


def one_line(text: str, limit: int = 500) -> str:
    return " ".join(str(text).split())[:limit]


class JsonApi:
    """JSON calls to one base URL through the outbound seam. ``secrets`` is called before each
    call: it may grow (a token read from a file)."""

    def __init__(
        self,
        base_url: str,
        *,
        headers: Mapping[str, str],
        timeout_s: float,
        policy: RetryPolicy,
        secrets: Callable[[], Sequence[str]],
        session: aiohttp.ClientSession | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rate_limit: RateLimitHook | None = None,
        clock: Callable[[], float] | None = None,
        monotonic: Callable[[], float] | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.headers = dict(headers)
        extra: dict[str, Any] = {}
        if clock is not None:
            extra["clock"] = clock
        if monotonic is not None:
            extra["monotonic"] = monotonic
        self.http = Outbound(
            session=session,
            timeout_s=timeout_s,
            secrets=secrets,
            policy=policy,
            rate_limit=rate_limit,
            sleep=sleep,
            **extra,
        )

    @property
    def timeout_s(self) -> float:
        return self.http.timeout_s

    async def close(self) -> None:
        """Close the session if this client created it (an injected one is the caller's)."""
        await self.http.close()

    async def call(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Any = _NO_BODY,
        content_type: str = "application/json",
        headers: Mapping[str, str] | None = None,
        ssl_context: ssl.SSLContext | bool = True,
        idempotent: bool = True,
    ) -> Reply:
        """``method`` ``base_url + path``; never raises for a failed call (exceptions are bugs).
        A non-idempotent call (a create) is only sent again when it certainly did not take effect."""
        all_headers = {**self.headers, **(headers or {})}
        data: bytes | None = None
        if body is not _NO_BODY:
            data = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
            all_headers["Content-Type"] = content_type
        got = await self.http.exchange(
            method,
            self.base_url + path,
            data=data,
            headers=all_headers,
            params=params,
            ssl=ssl_context,
            whole=True,
            idempotent=idempotent,
        )
        return Reply(
            method,
            path,
            got.status,
            json=got.json_doc,
            text=got.body[:OUTPUT_LIMIT],
            error="" if got.status is not None else got.outcome,
            attempts=got.attempts,
            history=list(got.history),
            retryable=got.retryable,
            retry_after_s=got.retry_after_s,
        )


# --- object names from templates (Kubernetes names, GitHub environments, nginx upstreams) ----------

NAME_PLACEHOLDERS = ("service", "environment")


def check_name_template(key: str, template: str) -> None:
    """A template may use ``{service}`` and ``{environment}`` only (plain, no format spec)."""
    if not template:
        raise ConfigError("must not be empty", field=key)
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as e:
        raise ConfigError(f"bad placeholder in {template!r}: {e}", field=key) from None
    for _literal, name, spec, conversion in parts:
        if name is None:
            continue
        if name not in NAME_PLACEHOLDERS or spec or conversion:
            raise ConfigError(
                f"unknown placeholder {{{name}}} in {template!r}; available: {{service}}, {{environment}}",
                field=key,
            )


def render_name(template: str, service: str, environment: str) -> str:
    return template.format_map({"service": service, "environment": environment})


def check_base_url(key: str, url: str) -> URL:
    """An absolute http(s) base URL without credentials, query or fragment."""
    try:
        parsed = URL(url)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"not a valid URL: {e}", field=key) from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ConfigError(f"must be an absolute http:// or https:// URL, got {url!r}", field=key)
    if parsed.user is not None or parsed.password is not None:
        raise ConfigError("must not carry credentials (user:password@); use the token setting", field=key)
    if parsed.query_string or parsed.fragment:
        raise ConfigError(f"must not have a query string or fragment, got {url!r}", field=key)
    return parsed


def check_timing(
    timeout_s: float,
    retries: int,
    backoff_s: float,
    backoff_max_s: float = 30.0,
    deadline_s: float | None = None,
) -> None:
    if not timeout_s > 0:
        raise ConfigError(f"must be a number of seconds > 0, got {timeout_s}", field="timeout_s")
    if not 0 <= retries <= 20:
        raise ConfigError(f"must be between 0 and 20, got {retries}", field="retries")
    if backoff_s < 0:
        raise ConfigError(f"must be a number of seconds >= 0, got {backoff_s}", field="backoff_s")
    if not backoff_max_s >= backoff_s:
        raise ConfigError(
            f"must be at least backoff_s ({backoff_s}), got {backoff_max_s}", field="backoff_max_s"
        )
    if deadline_s is not None and not 0 < deadline_s <= MAX_DEADLINE_S:
        raise ConfigError(
            f"must be between 0 and {MAX_DEADLINE_S:g} seconds (below the engine's guard around an "
            f"adapter call), got {deadline_s}",
            field="deadline_s",
        )


MAX_DEADLINE_S = 840.0  # the engine's last-resort guard around one adapter call is longer


def policy_of(retries: int, backoff_s: float, backoff_max_s: float, deadline_s: float | None) -> RetryPolicy:
    """The seam's retry policy from an adapter's timing settings; no single wait is longer than
    the deadline."""
    wait_cap = deadline_s if deadline_s is not None else MAX_DEADLINE_S
    return RetryPolicy(
        retries=retries, backoff=Backoff(backoff_s, backoff_max_s), deadline_s=deadline_s, max_wait_s=wait_cap
    )
