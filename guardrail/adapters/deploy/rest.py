"""A small JSON-over-HTTP client shared by the deploy adapters that talk to an API (Kubernetes,
GitHub): one call = up to ``retries + 1`` attempts, each with its own timeout.

Retried: no answer (connection refused or reset, timeout), 429, 5xx, and whatever the caller's
``retryable`` says (GitHub's rate-limit 403). Not retried: a TLS verification failure and any other
answer. The wait before retry ``n`` is ``backoff_s * 2**(n-1)``, or ``Retry-After`` (seconds, at most
30) when that is longer. Redirects are not followed. The body is read up to ``max_body_bytes``,
parsed as JSON, and kept for the record redacted first and then cut to ``output_limit`` characters.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import string
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from yarl import URL

from guardrail.adapters.outbound import Outbound, retryable_status
from guardrail.domain.errors import ConfigError
from guardrail.secrets import redact_text

OUTPUT_LIMIT = 4000  # characters of a response body kept for the record
MAX_BODY_BYTES = 16 * 1024 * 1024
MAX_RETRY_AFTER_S = 30.0

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

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    def outcome(self) -> str:
        """One line: ``PATCH /x -> 404 (attempt 1 of 1)`` or ``GET /x -> timed out after 5s ...``."""
        what = str(self.status) if self.status is not None else self.error
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
    """JSON calls to one base URL. ``secrets`` is called before each call: it may grow (a token
    read from a file)."""

    def __init__(
        self,
        base_url: str,
        *,
        headers: Mapping[str, str],
        timeout_s: float,
        retries: int,
        backoff_s: float,
        secrets: Callable[[], Sequence[str]],
        session: aiohttp.ClientSession | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        retryable: Callable[[aiohttp.ClientResponse], bool] | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.headers = dict(headers)
        self.retries = retries
        self.backoff_s = backoff_s
        self._secrets = secrets
        # the session and the timeout; secrets are redacted here, as they may grow between calls
        self._http = Outbound(session=session, timeout_s=timeout_s, secrets=())
        self._sleep = sleep
        self._retryable = retryable

    @property
    def timeout_s(self) -> float:
        return self._http.timeout_s

    async def close(self) -> None:
        """Close the session if this client created it (an injected one is the caller's)."""
        await self._http.close()

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
        retry: bool = True,
    ) -> Reply:
        """``method`` ``base_url + path``; never raises for a failed call (exceptions are bugs)."""
        secrets = list(self._secrets())
        all_headers = {**self.headers, **(headers or {})}
        data: bytes | None = None
        if body is not _NO_BODY:
            data = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
            all_headers["Content-Type"] = content_type
        attempts = self.retries + 1 if retry else 1
        history: list[str] = []
        reply = Reply(method, path, None)
        for attempt in range(1, attempts + 1):
            started = time.monotonic()
            retry_after: float | None = None
            try:
                status, raw, retryable, retry_after = await self._attempt(
                    method, path, params, data, all_headers, ssl_context
                )
            except aiohttp.ClientSSLError as e:
                error = redact_text(f"TLS failed: {one_line(str(e), 300)}", secrets)
                history.append(error)
                return Reply(method, path, None, error=error, attempts=attempt, history=history)
            except (aiohttp.ClientConnectionError, TimeoutError) as e:
                error = (
                    f"timed out after {self.timeout_s:g}s"
                    if isinstance(e, TimeoutError)
                    else f"{type(e).__name__}: {one_line(str(e), 300)}"
                )
                reply = Reply(method, path, None, error=redact_text(error, secrets), attempts=attempt)
                retryable = True
            except aiohttp.ClientError as e:
                error = redact_text(f"{type(e).__name__}: {one_line(str(e), 300)}", secrets)
                history.append(error)
                return Reply(method, path, None, error=error, attempts=attempt, history=history)
            else:
                text = raw.decode("utf-8", errors="replace")
                try:
                    doc = json.loads(text) if text.strip() else None
                except ValueError:
                    doc = None
                reply = Reply(
                    method,
                    path,
                    status,
                    json=doc,
                    text=redact_text(text, secrets)[:OUTPUT_LIMIT],
                    attempts=attempt,
                )
            history.append(
                f"{reply.status} in {time.monotonic() - started:.2f} s"
                if reply.status is not None
                else reply.error
            )
            if reply.ok or not retryable or attempt == attempts:
                break
            delay = self.backoff_s * 2 ** (attempt - 1)
            if retry_after is not None:
                delay = max(delay, min(retry_after, MAX_RETRY_AFTER_S))
            await self._sleep(delay)
        return Reply(
            reply.method,
            reply.path,
            reply.status,
            json=reply.json,
            text=reply.text,
            error=reply.error,
            attempts=reply.attempts,
            history=history,
        )

    async def _attempt(
        self,
        method: str,
        path: str,
        params: Mapping[str, str] | None,
        data: bytes | None,
        headers: Mapping[str, str],
        ssl_context: ssl.SSLContext | bool,
    ) -> tuple[int, bytes, bool, float | None]:
        async with self._http.request(
            method, self.base_url + path, params=params, data=data, headers=headers, ssl=ssl_context
        ) as resp:
            chunks: list[bytes] = []
            size = 0
            async for chunk in resp.content.iter_chunked(65536):
                chunks.append(chunk)
                size += len(chunk)
                if size > MAX_BODY_BYTES:
                    raise aiohttp.ClientPayloadError(f"response body larger than {MAX_BODY_BYTES} bytes")
            retryable = retryable_status(resp.status)
            if not retryable and self._retryable is not None:
                retryable = self._retryable(resp)
            raw_after = resp.headers.get("Retry-After", "").strip()
            retry_after = float(raw_after) if raw_after.isdigit() else None
            return resp.status, b"".join(chunks), retryable, retry_after


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


def check_timing(timeout_s: float, retries: int, backoff_s: float) -> None:
    if not timeout_s > 0:
        raise ConfigError(f"must be a number of seconds > 0, got {timeout_s}", field="timeout_s")
    if not 0 <= retries <= 20:
        raise ConfigError(f"must be between 0 and 20, got {retries}", field="retries")
    if backoff_s < 0:
        raise ConfigError(f"must be a number of seconds >= 0, got {backoff_s}", field="backoff_s")
