"""The outbound HTTP plumbing the notifiers, the annotators and the API deploy adapters share.

:class:`Outbound` owns (or borrows) the ``aiohttp.ClientSession``, opens every request with the
per-call timeout and without following redirects, and can make one classified exchange: a 2xx is
an answer, a 429 or a 5xx is ``retryable``, a timeout or a connection error is ``retryable``, any
other client error is not. Bodies are read capped and with every secret redacted
(:func:`guardrail.adapters.http_body.read_redacted`); error texts are redacted too.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp
from yarl import URL

from guardrail.adapters.http_body import read_redacted
from guardrail.secrets import redact_text

__all__ = ["Exchange", "Outbound", "one_line", "retryable_status"]


def one_line(text: str) -> str:
    """``text`` with every run of whitespace (line breaks included) turned into one space."""
    return " ".join(text.split())


def retryable_status(status: int) -> bool:
    """Whether an answer with this status may succeed when sent again: a 429 or a 5xx."""
    return status == 429 or status >= 500


@dataclass(frozen=True, slots=True)
class Exchange:
    """What one request got: the status (None when no answer came), the start of the answer
    (secrets redacted), a one-line outcome and whether trying again later could succeed."""

    status: int | None
    body: str
    outcome: str
    retryable: bool

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


E = TypeVar("E", bound=Exchange)


class Outbound:
    """Requests with a timeout, no redirects and secrets redacted. The session is injected (and
    then the caller's to close) or made on first use (and then closed by :meth:`close`)."""

    def __init__(
        self, *, session: aiohttp.ClientSession | None, timeout_s: float, secrets: Sequence[str]
    ) -> None:
        self._session = session
        self._owns_session = session is None
        self.timeout_s = timeout_s
        self.secrets = tuple(s for s in secrets if s)

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

    def request(self, method: str, url: str | URL, **kwargs: Any) -> Any:
        """``session.request`` with this client's timeout and redirects not followed; use it as
        ``async with``."""
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        return self.session().request(method, url, timeout=timeout, allow_redirects=False, **kwargs)

    async def exchange(
        self,
        method: str,
        url: str | URL,
        *,
        data: bytes,
        headers: Mapping[str, str],
        read_limit: int,
        flatten: bool,
        kind: type[E],
    ) -> E:
        """One attempt, classified; never raises for a failed call. ``flatten`` makes the body and
        an error text one line."""
        started = time.monotonic()
        try:
            async with self.request(method, url, data=data, headers=headers) as resp:
                text = await read_redacted(resp, self.secrets, read_limit)
                status = resp.status
        except TimeoutError:
            return kind(None, "", f"timed out after {self.timeout_s:g} s", True)
        except aiohttp.ClientError as e:
            error = f"{type(e).__name__}: {e}"
            retryable = isinstance(e, aiohttp.ClientConnectionError)
            return kind(None, "", self.redact(one_line(error) if flatten else error), retryable)
        outcome = f"{status} in {time.monotonic() - started:.2f} s"
        return kind(status, one_line(text) if flatten else text, outcome, retryable_status(status))
