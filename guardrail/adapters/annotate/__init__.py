"""Annotators (the ``Annotator`` port): deploy markers as Grafana annotations and Honeycomb markers.

Shared conventions: each call goes through the outbound seam (:mod:`guardrail.adapters.outbound`)
with the retry policy of ``annotations:`` (``retries`` more attempts on a 429, a 5xx, a timeout or
a connection error, capped exponential backoff with jitter, ``Retry-After`` honoured, within
:data:`DEADLINE_S`); never an exception for a failed call; a 2xx is success, any other answer is
not retried (redirects are not followed). Details are one line with the token redacted. The calls
run in the background (:class:`guardrail.service.annotations.DeployAnnotations`): a rollback never
waits on them. A create whose answer was lost may be retried and leave a duplicate marker.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp
from yarl import URL

from guardrail.adapters.outbound import Exchange, Outbound, RetryPolicy, one_line
from guardrail.domain.errors import ConfigError
from guardrail.ports import AnnotationResult, Annotator
from guardrail.retry import Backoff

if TYPE_CHECKING:
    from guardrail.config import AnnotationsConfig

_READ_LIMIT = 4096
_SHOWN = 200

__all__ = ["Answer", "JsonHttp", "build_annotators", "check_url", "secret_from"]


@dataclass(frozen=True, slots=True)
class Answer(Exchange):
    """One HTTP exchange: the status (None when no answer came), the start of the body (secrets
    redacted), a one-line outcome and whether another attempt could succeed."""

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError:
            return None

    def result(self, what: str, **extra: Any) -> AnnotationResult:
        detail = f"{what} -> {self.outcome}"
        if not self.ok:
            if self.body:
                detail += f": {one_line(self.body)[:_SHOWN]}"
            if not self.retryable:
                detail += " (not retried)"
        return AnnotationResult(
            ok=self.ok,
            retryable=not self.ok and self.retryable,
            detail=detail,
            retry_after_s=None if self.ok else self.retry_after_s,
            **extra,
        )


class JsonHttp(Outbound):
    """JSON requests with a timeout, answers classified, secrets redacted. The session is injected
    or made on first use (and closed by :meth:`close`)."""

    def __init__(
        self,
        *,
        session: aiohttp.ClientSession | None,
        timeout_s: float,
        secrets: Sequence[str],
        policy: RetryPolicy | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if not timeout_s > 0:
            raise ConfigError(f"must be a number of seconds > 0, got {timeout_s}", field="timeout_s")
        super().__init__(session=session, timeout_s=timeout_s, secrets=secrets, policy=policy, sleep=sleep)

    async def send(
        self, method: str, url: str | URL, body: Mapping[str, Any], headers: Mapping[str, str]
    ) -> Answer:
        data = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
        headers = {"Content-Type": "application/json", "Accept": "application/json", **headers}
        return await self.exchange(
            method, url, data=data, headers=headers, read_limit=_READ_LIMIT, flatten=False, kind=Answer
        )


def check_url(value: str, key: str) -> URL:
    url = URL(value)
    if url.scheme not in ("http", "https") or not url.host:
        raise ConfigError(f"must be an absolute http:// or https:// URL, got {value!r}", field=key)
    if url.user is not None or url.password is not None:
        raise ConfigError("must not carry credentials (user:password@); set the token instead", field=key)
    return url


def secret_from(value: str | None, env_name: str | None, env: Mapping[str, str], key: str) -> str:
    """The secret given inline, or read from the environment variable ``env_name``."""
    if value:
        return value
    if env_name:
        found = env.get(env_name, "").strip()
        if not found:
            raise ConfigError(f"environment variable {env_name} is not set or empty", field=f"{key}_env")
        return found
    raise ConfigError(f"set {key.rsplit('.', 1)[-1]} or {key.rsplit('.', 1)[-1]}_env", field=key)


DEADLINE_S = 100.0  # one mark, its retries and waits included (below the service's guard)


def policy_of(config: AnnotationsConfig) -> RetryPolicy:
    return RetryPolicy(
        retries=config.retries,
        backoff=Backoff(config.backoff_s, max(config.backoff_s, config.backoff_max_s)),
        deadline_s=DEADLINE_S,
        max_wait_s=DEADLINE_S,
    )


def build_annotators(
    config: AnnotationsConfig,
    *,
    env: Mapping[str, str],
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> list[Annotator]:
    """The annotators the ``annotations:`` settings describe (no I/O). Errors name the key."""
    from guardrail.adapters.annotate.grafana import GrafanaAnnotator
    from guardrail.adapters.annotate.honeycomb import HoneycombAnnotator

    policy = policy_of(config)
    built: list[Annotator] = []
    g = config.grafana
    if g is not None:
        token = secret_from(
            g.token.get_secret_value() if g.token else None, g.token_env, env, "annotations.grafana.token"
        )
        built.append(
            GrafanaAnnotator(
                url=g.url,
                token=token,
                dashboard_uid=g.dashboard_uid,
                tags=tuple(g.tags),
                timeout_s=g.timeout_s,
                policy=policy,
                sleep=sleep,
            )
        )
    h = config.honeycomb
    if h is not None:
        key = secret_from(
            h.api_key.get_secret_value() if h.api_key else None,
            h.api_key_env,
            env,
            "annotations.honeycomb.api_key",
        )
        built.append(
            HoneycombAnnotator(
                api_url=h.api_url,
                dataset=h.dataset,
                api_key=key,
                timeout_s=h.timeout_s,
                policy=policy,
                sleep=sleep,
            )
        )
    return built
