"""Call an HTTP endpoint for each action with a Flagger-compatible webhook body.

``POST url`` with ``{"name": service, "namespace": environment, "phase": ..., "metadata": {...}}``:

============  ===============  =====================
method        phase            ``metadata.type``
============  ===============  =====================
apply_step    ``Progressing``  ``rollout``
finalize      ``Promoting``    ``confirm-promotion``
rollback      ``Failed``       ``rollback``
============  ===============  =====================

Metadata values are all strings: ``deploy_id version previous_version commit action_key`` always,
``weight servers step total_steps`` for a rollout (``step`` 1-based, ``servers`` a number or
``all``), ``reason`` for a rollback. Headers: ``Content-Type: application/json``,
``Idempotency-Key: <action_key>`` (the same on every retry and after a crash) and, when a
``secret`` is set, ``X-Guardrail-Signature: sha256=<hex HMAC-SHA256 of the exact body bytes>``.

As in Flagger, a 2xx answer means done; anything else fails the action. Connection errors,
timeouts, 429 and 5xx are retried ``retries`` times with exponential backoff (``backoff_s``,
doubled each time; a ``Retry-After`` in seconds is honoured up to 30 s); other answers are not.
Each attempt has its own ``timeout_s``; redirects are not followed. The URL's query string is left
out of results (put tokens in ``secret_headers``, never in the URL).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

import aiohttp
from yarl import URL

from guardrail.adapters.deploy import freeze_mappings, parse_adapter_config, step_values, target_values
from guardrail.adapters.http_body import read_redacted
from guardrail.domain.errors import ConfigError
from guardrail.domain.model import Step
from guardrail.ports import ActionResult, DeployTarget
from guardrail.secrets import redact_text, secret_field, secret_values

SIGNATURE_HEADER = "X-Guardrail-Signature"
_RESERVED_HEADERS = ("content-type", "content-length", "host", "idempotency-key", SIGNATURE_HEADER.lower())
_TOKEN_CHARS = set("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_OUTPUT_LIMIT = 4000  # characters of the response body kept
_MAX_RETRY_AFTER_S = 30.0


def _check_headers(key: str, headers: Mapping[str, str], *, secret: bool) -> None:
    for name, value in headers.items():
        if not name or not set(name) <= _TOKEN_CHARS:
            raise ConfigError(f"{name!r} is not a valid HTTP header name", field=f"{key}.{name}")
        if name.lower() in _RESERVED_HEADERS:
            raise ConfigError(
                f"header {name} is set by guardrail and cannot be configured", field=f"{key}.{name}"
            )
        if any(c in value for c in "\r\n\0"):
            shown = "the value" if secret else repr(value)
            raise ConfigError(f"{shown} contains a line break or NUL", field=f"{key}.{name}")


@dataclass(frozen=True, slots=True)
class WebhookConfig:
    url: str
    secret: str | None = secret_field(default=None)  # HMAC-SHA256 key for X-Guardrail-Signature
    timeout_s: float = 10.0  # per attempt
    retries: int = 3  # extra attempts after the first
    backoff_s: float = 0.5  # before the first retry; doubled each time
    headers: Mapping[str, str] = field(default_factory=dict)
    secret_headers: Mapping[str, str] = secret_field(default_factory=dict)  # e.g. Authorization

    def __post_init__(self) -> None:
        freeze_mappings(self, "headers", "secret_headers")
        try:
            url = URL(self.url)
        except (ValueError, TypeError) as e:
            raise ConfigError(f"not a valid URL: {e}", field="url") from None
        if url.scheme not in ("http", "https") or not url.host:
            raise ConfigError(f"must be an absolute http:// or https:// URL, got {self.url!r}", field="url")
        if url.user is not None or url.password is not None:
            raise ConfigError(
                "must not carry credentials (user:password@); put them in secret_headers", field="url"
            )
        if not self.timeout_s > 0:
            raise ConfigError(f"must be a number of seconds > 0, got {self.timeout_s}", field="timeout_s")
        if not 0 <= self.retries <= 20:
            raise ConfigError(f"must be between 0 and 20, got {self.retries}", field="retries")
        if self.backoff_s < 0:
            raise ConfigError(f"must be a number of seconds >= 0, got {self.backoff_s}", field="backoff_s")
        if self.secret is not None and not self.secret:
            raise ConfigError("must not be empty (leave it out to send unsigned requests)", field="secret")
        _check_headers("headers", self.headers, secret=False)
        _check_headers("secret_headers", self.secret_headers, secret=True)
        both = {h.lower() for h in self.headers} & {h.lower() for h in self.secret_headers}
        if both:
            raise ConfigError(
                f"header(s) {', '.join(sorted(both))} also set in headers", field="secret_headers"
            )


def sign(secret: str, body: bytes) -> str:
    """The ``X-Guardrail-Signature`` value for ``body``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class WebhookDeployAdapter:
    name = "webhook"
    config_type: ClassVar[type[WebhookConfig]] = WebhookConfig

    def __init__(
        self,
        config: WebhookConfig,
        *,
        session: aiohttp.ClientSession | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.config = config
        self._session = session
        self._owns_session = session is None
        self._sleep = sleep
        self._secrets = secret_values(config)
        url = URL(config.url)
        self._shown_url = str(url.with_query(None).with_fragment(None))

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Self:
        return cls(parse_adapter_config(WebhookConfig, config, name="webhook"))

    def __repr__(self) -> str:
        return f"WebhookDeployAdapter({self.config!r})"

    async def close(self) -> None:
        """Close the HTTP session if this adapter created it (an injected one is the caller's)."""
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or (self._owns_session and self._session.closed):
            self._session = aiohttp.ClientSession()
        return self._session

    async def apply_step(self, target: DeployTarget, step: Step, index: int, total: int) -> ActionResult:
        return await self._call(target, "Progressing", "rollout", step_values(step, index, total))

    async def finalize(self, target: DeployTarget) -> ActionResult:
        return await self._call(target, "Promoting", "confirm-promotion", {})

    async def rollback(self, target: DeployTarget, reason: str) -> ActionResult:
        return await self._call(target, "Failed", "rollback", {"reason": reason})

    def body(self, target: DeployTarget, phase: str, kind: str, extra: Mapping[str, str]) -> bytes:
        values = target_values(target)
        metadata = {
            "type": kind,
            **{k: values[k] for k in ("deploy_id", "version", "previous_version", "commit")},
            **extra,
            "action_key": target.action_key,
        }
        doc = {"name": target.service, "namespace": target.environment, "phase": phase, "metadata": metadata}
        return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()

    async def _call(
        self, target: DeployTarget, phase: str, kind: str, extra: Mapping[str, str]
    ) -> ActionResult:
        cfg = self.config
        body = self.body(target, phase, kind, extra)
        headers = {
            **cfg.headers,
            **cfg.secret_headers,
            "Content-Type": "application/json",
            "Idempotency-Key": target.action_key,
        }
        if cfg.secret:
            headers[SIGNATURE_HEADER] = sign(cfg.secret, body)
        attempts = cfg.retries + 1
        history: list[str] = []
        for attempt in range(1, attempts + 1):
            started = time.monotonic()
            status: int | None = None
            output = ""
            retry_after: float | None = None
            try:
                status, output, retry_after = await self._post(body, headers)
            except (aiohttp.ClientConnectionError, TimeoutError) as e:
                outcome = (
                    f"timed out after {cfg.timeout_s:g}s"
                    if isinstance(e, TimeoutError)
                    else f"{type(e).__name__}: {e}"
                )
                retryable = True
            except aiohttp.ClientError as e:
                outcome, retryable = f"{type(e).__name__}: {e}", False
            else:
                outcome = f"{status} in {time.monotonic() - started:.2f} s"
                retryable = status == 429 or status >= 500
            outcome = redact_text(outcome, self._secrets)
            history.append(outcome)
            data: dict[str, Any] = {
                "url": self._shown_url,
                "status": status,
                "attempts": attempt,
                "history": history,
            }
            if status is not None and 200 <= status < 300:
                return ActionResult(
                    ok=True,
                    detail=f"POST {self._shown_url} -> {outcome} (attempt {attempt})",
                    output=output,
                    data=data,
                )
            if not retryable or attempt == attempts:
                why = "not retried" if not retryable else "giving up"
                return ActionResult(
                    ok=False,
                    detail=f"POST {self._shown_url} -> {outcome} (attempt {attempt} of {attempts}, {why})",
                    output=output,
                    data=data,
                )
            delay = cfg.backoff_s * 2 ** (attempt - 1)
            if retry_after is not None:
                delay = max(delay, min(retry_after, _MAX_RETRY_AFTER_S))
            await self._sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _post(self, body: bytes, headers: Mapping[str, str]) -> tuple[int, str, float | None]:
        """One attempt: (status, start of the response body with secrets redacted, Retry-After
        seconds if given). Redaction happens before truncation; when the body is cut, the last
        characters read are dropped so that no half of a secret survives the cut."""
        timeout = aiohttp.ClientTimeout(total=self.config.timeout_s)
        session = self._get_session()
        async with session.post(
            self.config.url, data=body, headers=headers, timeout=timeout, allow_redirects=False
        ) as resp:
            text = (await read_redacted(resp, self._secrets, 4 * _OUTPUT_LIMIT))[:_OUTPUT_LIMIT]
            retry_after: float | None = None
            raw = resp.headers.get("Retry-After", "").strip()
            if raw.isdigit():
                retry_after = float(raw)
            return resp.status, text, retry_after
