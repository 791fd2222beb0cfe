"""The one outbound HTTP seam: every adapter, notifier, annotator and the Prometheus client send
their requests through :class:`Outbound`. Adapters describe requests and read answers; they do not
loop, sleep or classify.

:class:`Outbound` owns (or borrows) the ``aiohttp.ClientSession`` and does, for each call:

* **one attempt** at a time, with the per-attempt timeout (never past the call's deadline), no
  redirects followed, the body read capped and every secret redacted;
* **one classification** (:func:`classify`): a 2xx is an answer; a provider's rate limit (its
  :class:`RateLimitHook`, e.g. GitHub's ``x-ratelimit-*``), a 429 and a 5xx are retryable, as are a
  timeout and a failed connection; a TLS failure and any other answer are not. ``Retry-After``
  (seconds or an HTTP-date) is read into ``retry_after_s``. Whether the request certainly did not
  take effect (never connected, 429, rate-limited) is ``safe_to_resend``: a non-idempotent call
  (``idempotent=False``) is only sent again then;
* **one retry policy** (:class:`RetryPolicy`): up to ``retries`` more attempts, waiting
  :class:`guardrail.retry.Backoff` (capped exponential with jitter) or what the server asked for,
  whichever is longer, never past ``deadline_s`` for the whole call and never longer than
  ``max_wait_s`` at once: an answer asking for more ends the call at once, retryable, with the
  wait in ``retry_after_s`` (the outbox and the engine schedule it instead of blocking).

The default policy makes one attempt (``retries=0``): the notifiers and annotators leave retrying
across calls to their services, which read ``retry_after_s``.
"""

from __future__ import annotations

import asyncio
import json
import random
import ssl as ssl_module
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, TypeVar

import aiohttp
from multidict import CIMultiDictProxy
from yarl import URL

from guardrail.retry import Backoff, retry_after_seconds
from guardrail.secrets import redact_text

__all__ = [
    "Exchange",
    "Outbound",
    "RateLimitHook",
    "RetryPolicy",
    "Throttle",
    "classify",
    "one_line",
    "retryable_status",
]

MAX_BODY_BYTES = 16 * 1024 * 1024  # the most ever read of one answer (whole=True)


def one_line(text: str) -> str:
    """``text`` with every run of whitespace (line breaks included) turned into one space."""
    return " ".join(text.split())


def retryable_status(status: int) -> bool:
    """Whether an answer with this status may succeed when sent again: a 429 or a 5xx."""
    return status == 429 or status >= 500


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How one call retries: ``retries`` more attempts after the first, waits by ``backoff`` (or the
    server's ``Retry-After`` / rate-limit reset when longer), all within ``deadline_s`` (None: no
    overall limit beyond the attempts' timeouts), no single wait longer than ``max_wait_s``."""

    retries: int = 0
    backoff: Backoff = field(default_factory=lambda: Backoff(0.5, 30.0))
    deadline_s: float | None = None
    max_wait_s: float = 300.0

    def __post_init__(self) -> None:
        if not 0 <= self.retries <= 20:
            raise ValueError(f"retries must be between 0 and 20, got {self.retries}")
        if self.deadline_s is not None and not self.deadline_s > 0:
            raise ValueError(f"deadline must be > 0 seconds, got {self.deadline_s}")
        if not self.max_wait_s >= 0:
            raise ValueError(f"max_wait_s must be >= 0, got {self.max_wait_s}")


@dataclass(frozen=True, slots=True)
class Throttle:
    """A provider's "slow down": wait ``wait_s`` before sending again, because ``reason``."""

    wait_s: float
    reason: str


class RateLimitHook(Protocol):
    """A provider's rate-limit rules (e.g. GitHub's), consulted by :class:`Outbound`.

    ``before(now)``: seconds to hold a request back (a limit seen earlier has not reset yet).
    ``after(status, headers, body, now, repeats)``: a :class:`Throttle` when this answer is the
    provider saying "rate limited" (``repeats``: how many answers of this call were throttled
    before), else None (the answer is classified as usual)."""

    def before(self, now: float) -> float: ...

    def after(
        self, status: int, headers: Mapping[str, str], body: str, now: float, repeats: int
    ) -> Throttle | None: ...


@dataclass(frozen=True, slots=True)
class Exchange:
    """What one call got: the last attempt's status (None when no answer came), the start of the
    answer (secrets redacted), a one-line outcome, whether trying again later could succeed and
    how long the server asked to wait first; the attempts made and each one's outcome."""

    status: int | None
    body: str
    outcome: str
    retryable: bool
    retry_after_s: float | None = None  # the server's (or its rate limit's) wait, when it said
    attempts: int = 1
    history: tuple[str, ...] = ()
    json_doc: Any = field(default=None, repr=False)  # the parsed body (whole=True), None if not JSON
    safe_to_resend: bool = False  # the request certainly did not take effect

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


E = TypeVar("E", bound=Exchange)


@dataclass(frozen=True, slots=True)
class _Class:
    retryable: bool
    safe: bool
    wait_s: float | None
    note: str


def classify(
    status: int,
    headers: Mapping[str, str],
    body: str,
    now: float,
    *,
    hook: RateLimitHook | None = None,
    repeats: int = 0,
) -> _Class:
    """The one place an HTTP answer is judged retryable or not (see the module docstring)."""
    if 200 <= status < 300:
        return _Class(False, False, None, "")
    throttle = hook.after(status, headers, body, now, repeats) if hook is not None else None
    if throttle is not None:
        return _Class(True, True, max(0.0, throttle.wait_s), throttle.reason)
    retry_after = retry_after_seconds(headers.get("Retry-After"), now)
    if status == 429:
        return _Class(True, True, retry_after, "")
    if status >= 500:
        return _Class(True, False, retry_after, "")
    return _Class(False, False, None, "")


class Outbound:
    """Requests with a timeout, no redirects, secrets redacted, answers classified and retried by
    ``policy``. The session is injected (and then the caller's to close) or made on first use (and
    then closed by :meth:`close`). ``secrets`` may be a callable: it is asked at each call (a token
    read from a file may change). ``sleep``, ``clock`` (wall time, for ``Retry-After`` dates and
    rate-limit resets), ``monotonic`` and ``rand`` are injectable for tests."""

    def __init__(
        self,
        *,
        session: aiohttp.ClientSession | None,
        timeout_s: float,
        secrets: Sequence[str] | Callable[[], Sequence[str]] = (),
        policy: RetryPolicy | None = None,
        rate_limit: RateLimitHook | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
    ) -> None:
        if not timeout_s > 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout_s}")
        self._session = session
        self._owns_session = session is None
        self.timeout_s = timeout_s
        self._secrets = secrets
        self.policy = policy or RetryPolicy()
        self.rate_limit = rate_limit
        self._sleep = sleep
        self._clock = clock
        self._monotonic = monotonic
        self._rand = rand

    @property
    def secrets(self) -> tuple[str, ...]:
        raw = self._secrets() if callable(self._secrets) else self._secrets
        return tuple(s for s in raw if s)

    def session(self) -> aiohttp.ClientSession:
        """The session to use: the injected one, or this client's own (made anew once closed)."""
        if self._session is None or (self._owns_session and self._session.closed):
            self._session = aiohttp.ClientSession()
        return self._session

    async def close(self) -> None:
        """Close the session if this client made it (an injected one is the caller's)."""
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    def redact(self, text: str) -> str:
        return redact_text(text, self.secrets)

    async def pause(self, attempt: int) -> None:
        """Wait the policy's backoff before retry ``attempt`` (for a caller that must look before
        it sends again, e.g. after an ambiguous create)."""
        await self._sleep(self.policy.backoff.delay(attempt, self._rand()))

    async def exchange(
        self,
        method: str,
        url: str | URL,
        *,
        data: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
        ssl: ssl_module.SSLContext | bool = True,
        read_limit: int = 4096,
        whole: bool = False,
        flatten: bool = False,
        idempotent: bool = True,
        retry: bool = True,
        kind: type[E] = Exchange,  # type: ignore[assignment]
    ) -> E:
        """One call, retried by the policy; never raises for a failed call. ``whole`` reads the
        entire body (up to 16 MiB; more is a failure) and parses it as JSON into ``json_doc``;
        otherwise about ``read_limit`` bytes are read. ``flatten`` makes the body and an error text
        one line. ``retry=False`` makes one attempt whatever the policy."""
        policy = self.policy
        attempts = policy.retries + 1 if retry else 1
        started = self._monotonic()
        history: list[str] = []
        throttled = 0
        result: E | None = None
        for attempt in range(1, attempts + 1):
            hold = self.rate_limit.before(self._clock()) if self.rate_limit is not None else 0.0
            if hold > 0:
                left = (
                    None if policy.deadline_s is None else policy.deadline_s - (self._monotonic() - started)
                )
                if hold > policy.max_wait_s or (left is not None and hold > left):
                    note = f"held back: the rate limit resets in {hold:.0f} s (not sent)"
                    history.append(note)
                    return kind(None, "", note, True, hold, attempt - 1, tuple(history), None, True)
                await self._sleep(hold)
            timeout = self.timeout_s
            if policy.deadline_s is not None:
                timeout = max(0.001, min(timeout, policy.deadline_s - (self._monotonic() - started)))
            result = await self._once(
                method, url, data, headers, params, ssl, read_limit, whole, flatten, timeout, throttled, kind
            )
            history.append(result.outcome)
            if result.retry_after_s is not None and result.safe_to_resend and result.status is not None:
                throttled += 1
            if result.ok or not result.retryable or attempt == attempts:
                break
            if not idempotent and not result.safe_to_resend:
                result = replace(result, outcome=result.outcome + " (not resent: it may have taken effect)")
                break
            wait = max(policy.backoff.delay(attempt, self._rand()), result.retry_after_s or 0.0)
            elapsed = self._monotonic() - started
            if wait > policy.max_wait_s or (
                policy.deadline_s is not None and elapsed + wait > policy.deadline_s
            ):
                result = replace(
                    result,
                    outcome=f"{result.outcome} (a retry would wait {wait:.1f} s, past the call's limit)",
                    retry_after_s=max(wait, result.retry_after_s or 0.0),
                )
                break
            await self._sleep(wait)
        assert result is not None
        return replace(result, attempts=attempt, history=tuple(history))

    async def _once(
        self,
        method: str,
        url: str | URL,
        data: bytes | None,
        headers: Mapping[str, str] | None,
        params: Mapping[str, str] | None,
        ssl: ssl_module.SSLContext | bool,
        read_limit: int,
        whole: bool,
        flatten: bool,
        timeout_s: float,
        throttled: int,
        kind: type[E],
    ) -> E:
        """One attempt, classified."""
        secrets = self.secrets
        started = self._monotonic()

        def text_of(error: str) -> str:
            return redact_text(one_line(error) if flatten else error, secrets)

        try:
            async with self.session().request(
                method,
                url,
                data=data,
                headers=dict(headers or {}),
                params=params,
                ssl=ssl,
                timeout=aiohttp.ClientTimeout(total=timeout_s),
                allow_redirects=False,
            ) as resp:
                raw, cut = await _read(resp, MAX_BODY_BYTES if whole else read_limit, secrets)
                status = resp.status
                resp_headers: CIMultiDictProxy[str] = resp.headers
        except TimeoutError:
            return kind(None, "", f"timed out after {timeout_s:g} s", True)
        except aiohttp.ClientSSLError as e:  # before ClientConnectorError: a certificate error is both
            return kind(None, "", text_of(f"TLS failed: {type(e).__name__}: {e}"), False)
        except aiohttp.ClientConnectorError as e:  # never connected: the request was not sent
            return kind(None, "", text_of(f"{type(e).__name__}: {e}"), True, safe_to_resend=True)
        except aiohttp.ClientConnectionError as e:  # reset or closed mid-way: it may have arrived
            return kind(None, "", text_of(f"{type(e).__name__}: {e}"), True)
        except aiohttp.ClientError as e:
            return kind(None, "", text_of(f"{type(e).__name__}: {e}"), False)
        if whole and cut:
            outcome = f"{status}, but the answer is larger than {MAX_BODY_BYTES} bytes (not read)"
            return kind(status, "", outcome, False)
        text = _redacted_text(raw, cut, secrets)
        doc = None
        if whole and text.strip():
            try:
                doc = json.loads(raw.decode("utf-8", errors="replace"))
            except ValueError:
                doc = None
        c = classify(status, resp_headers, text, self._clock(), hook=self.rate_limit, repeats=throttled)
        outcome = f"{status} in {self._monotonic() - started:.2f} s"
        if c.note:
            outcome += f" ({c.note})"
        if c.wait_s is not None and not c.note:
            outcome += f" (retry after {c.wait_s:g} s)"
        return kind(
            status,
            one_line(text) if flatten else text,
            outcome,
            c.retryable,
            c.wait_s,
            json_doc=doc,
            safe_to_resend=c.safe,
        )


async def _read(resp: aiohttp.ClientResponse, limit: int, secrets: Sequence[str]) -> tuple[bytes, bool]:
    """About ``limit`` bytes of the body (plus room for a secret cut at the edge) and whether there
    was more. A body that ends early (the status is the answer) is just shorter."""
    longest = max((len(s) for s in secrets), default=0)
    wanted = limit + 4 * (longest + 1)  # up to 4 bytes per character in UTF-8
    chunks: list[bytes] = []
    size = 0
    cut = False
    try:
        async for chunk in resp.content.iter_chunked(65536):
            chunks.append(chunk)
            size += len(chunk)
            if size > wanted:
                cut = True
                break
    except (aiohttp.ClientError, TimeoutError):
        cut = True
    return b"".join(chunks), cut


def _redacted_text(raw: bytes, cut: bool, secrets: Sequence[str]) -> str:
    text = raw.decode("utf-8", errors="replace")
    longest = max((len(s) for s in secrets), default=0)
    if cut and longest:
        text = text[: len(text) - longest - 1]  # no half of a secret survives the cut
    return redact_text(text, secrets)
