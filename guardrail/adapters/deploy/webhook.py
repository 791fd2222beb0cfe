"""Call an HTTP endpoint for each action with Flagger's webhook body (``CanaryWebhookPayload``).

``POST url`` with exactly Flagger's fields (fluxcd/flagger ``pkg/apis/flagger/v1beta1/canary.go``)::

    {"name": service, "namespace": environment, "phase": "Progressing", "checksum": "<per deploy>",
     "metadata": {"guardrail_hook": ..., ...}}

============  ===========  =========================  =======================================
method        phase        ``metadata.guardrail_hook``  Flagger sends the same phase with
============  ===========  =========================  =======================================
apply_step    Progressing  ``rollout``                a ``rollout`` webhook (runAnalysis)
finalize      Progressing  ``confirm-promotion``      ``confirm-promotion`` webhooks
rollback      Progressing  ``rollback``               ``rollback`` webhooks (the canary's phase
                                                      while it is analysed)
============  ===========  =========================  =======================================

``checksum`` is stable for one deploy (a hash of its id and versions), as Flagger's identifies one
canary configuration. ``metadata.type`` is never set: Flagger's load tester reads it as its task
type (``cmd``, ``bash``, ``helm``, ...) and refuses others with a 400. A receiver written for
Flagger tells the actions apart by URL (one webhook per type, as in a Canary); guardrail sends all
three to one ``url`` and says which in ``metadata.guardrail_hook``.

Metadata values are all strings: ``deploy_id version previous_version commit action_key`` always,
``weight servers step total_steps`` for a rollout (``step`` 1-based, ``servers`` a number or
``all``), ``reason`` for a rollback. Headers: ``Content-Type: application/json``,
``Idempotency-Key: <action_key>`` (the same on every retry and after a crash) and, when a
``secret`` is set, ``X-Guardrail-Signature: sha256=<hex HMAC-SHA256 of the exact body bytes>``.

As in Flagger, a 2xx answer means done; anything else fails the action. Connection errors,
timeouts, 429 and 5xx are retried ``retries`` times by the outbound seam's policy (capped
exponential backoff with jitter from ``backoff_s`` to ``backoff_max_s``; a ``Retry-After``, in
seconds or as a date, is honoured when longer), all within ``deadline_s``; other answers are not.
Each attempt has its own ``timeout_s``; redirects are not followed. The URL's query string is left
out of results (put tokens in ``secret_headers``, never in the URL).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

import aiohttp
from yarl import URL

from guardrail.adapters.deploy import freeze_mappings, parse_adapter_config, step_values, target_values
from guardrail.adapters.deploy.rest import check_timing, policy_of
from guardrail.adapters.outbound import Outbound
from guardrail.domain.errors import ConfigError
from guardrail.domain.model import Step
from guardrail.ports import ActionResult, DeployTarget
from guardrail.secrets import redact_text, secret_field, secret_values

SIGNATURE_HEADER = "X-Guardrail-Signature"
_RESERVED_HEADERS = ("content-type", "content-length", "host", "idempotency-key", SIGNATURE_HEADER.lower())
_TOKEN_CHARS = set("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_OUTPUT_LIMIT = 4000  # characters of the response body kept


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
    backoff_s: float = 0.5  # before the first retry; doubled each time, with jitter
    backoff_max_s: float = 30.0
    deadline_s: float = 120.0  # the whole call, its retries and waits (Retry-After) included
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
        check_timing(self.timeout_s, self.retries, self.backoff_s, self.backoff_max_s, self.deadline_s)
        if self.secret is not None and not self.secret:
            raise ConfigError("must not be empty (leave it out to send unsigned requests)", field="secret")
        _check_headers("headers", self.headers, secret=False)
        _check_headers("secret_headers", self.secret_headers, secret=True)
        both = {h.lower() for h in self.headers} & {h.lower() for h in self.secret_headers}
        if both:
            raise ConfigError(
                f"header(s) {', '.join(sorted(both))} also set in headers", field="secret_headers"
            )


PHASE = "Progressing"  # what Flagger sends with rollout, confirm-promotion and (while analysing) rollback


def checksum(target: DeployTarget) -> str:
    """Stable per deploy: FNV-32a of its id and versions, encoded with Kubernetes' SafeEncodeString
    alphabet as Flagger's ``canary.ComputeHash`` does (there: of the canary's configuration)."""
    h = 0x811C9DC5
    for byte in "\0".join((target.deploy_id, target.version, target.previous_version)).encode():
        h = ((h ^ byte) * 0x01000193) & 0xFFFFFFFF
    alphabet = "bcdfghjklmnpqrstvwxz2456789"
    return "".join(alphabet[ord(c) % len(alphabet)] for c in str(h))


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
        self._secrets = secret_values(config)
        self._http = Outbound(
            session=session,
            timeout_s=config.timeout_s,
            secrets=self._secrets,
            policy=policy_of(config.retries, config.backoff_s, config.backoff_max_s, config.deadline_s),
            sleep=sleep,
        )
        url = URL(config.url)
        self._shown_url = str(url.with_query(None).with_fragment(None))

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Self:
        return cls(parse_adapter_config(WebhookConfig, config, name="webhook"))

    def __repr__(self) -> str:
        return f"WebhookDeployAdapter({self.config!r})"

    async def close(self) -> None:
        """Close the HTTP session if this adapter created it (an injected one is the caller's)."""
        await self._http.close()

    async def apply_step(self, target: DeployTarget, step: Step, index: int, total: int) -> ActionResult:
        return await self._call(target, "rollout", step_values(step, index, total))

    async def finalize(self, target: DeployTarget) -> ActionResult:
        return await self._call(target, "confirm-promotion", {})

    async def rollback(self, target: DeployTarget, reason: str) -> ActionResult:
        return await self._call(target, "rollback", {"reason": reason})

    def body(self, target: DeployTarget, hook: str, extra: Mapping[str, str]) -> bytes:
        values = target_values(target)
        metadata = {
            "guardrail_hook": hook,
            **{k: values[k] for k in ("deploy_id", "version", "previous_version", "commit")},
            **extra,
            "action_key": target.action_key,
        }
        doc = {
            "name": target.service,
            "namespace": target.environment,
            "phase": PHASE,
            "checksum": checksum(target),
            "metadata": metadata,
        }
        return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()

    async def _call(self, target: DeployTarget, hook: str, extra: Mapping[str, str]) -> ActionResult:
        cfg = self.config
        body = self.body(target, hook, extra)
        headers = {
            **cfg.headers,
            **cfg.secret_headers,
            "Content-Type": "application/json",
            "Idempotency-Key": target.action_key,
        }
        if cfg.secret:
            headers[SIGNATURE_HEADER] = sign(cfg.secret, body)
        got = await self._http.exchange(
            "POST", cfg.url, data=body, headers=headers, read_limit=4 * _OUTPUT_LIMIT
        )
        data: dict[str, Any] = {
            "url": self._shown_url,
            "status": got.status,
            "attempts": got.attempts,
            "history": list(got.history),
        }
        output = got.body[:_OUTPUT_LIMIT]
        if got.ok:
            detail = f"POST {self._shown_url} -> {got.outcome} (attempt {got.attempts})"
            return ActionResult(ok=True, detail=detail, output=output, data=data)
        why = "not retried" if not got.retryable else "giving up"
        detail = (
            f"POST {self._shown_url} -> {got.outcome} (attempt {got.attempts} of {cfg.retries + 1}, {why})"
        )
        return ActionResult(ok=False, detail=redact_text(detail, self._secrets), output=output, data=data)
