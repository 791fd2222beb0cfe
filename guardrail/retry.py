"""The one backoff rule and the one ``Retry-After`` reader, shared by every place that waits before
trying an outbound call again: the outbound HTTP seam (:mod:`guardrail.adapters.outbound`, retries
within one call), the notification outbox and the deploy annotations (retries across calls).

Pure: no clock reads, no randomness of its own (the caller passes the time and a random number),
so the service layer can use it and tests can pin it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

__all__ = ["Backoff", "retry_after_seconds"]


@dataclass(frozen=True, slots=True)
class Backoff:
    """Capped exponential backoff with jitter: before retry ``n`` (1-based) wait a random time in
    ``[ceiling(n) / 2, ceiling(n)]`` where ``ceiling(n) = min(max_s, base_s * 2**(n-1))`` ("equal
    jitter": never zero, never above the cap, and callers that failed together spread out)."""

    base_s: float
    max_s: float

    def __post_init__(self) -> None:
        if not (self.base_s >= 0 and math.isfinite(self.base_s)):
            raise ValueError(f"backoff base must be a number of seconds >= 0, got {self.base_s}")
        if not (self.max_s >= self.base_s and math.isfinite(self.max_s)):
            raise ValueError(f"backoff cap ({self.max_s}) must be at least its base ({self.base_s})")

    def ceiling(self, attempt: int) -> float:
        """The longest wait before retry ``attempt`` (the deterministic bound)."""
        n = max(int(attempt), 1)
        if n > 60:  # 2**60 overflows any cap anyway
            return self.max_s
        return min(self.max_s, self.base_s * 2 ** (n - 1))

    def delay(self, attempt: int, rand: float) -> float:
        """The wait before retry ``attempt``; ``rand`` is a uniform number in [0, 1)."""
        c = self.ceiling(attempt)
        return c / 2 + min(max(rand, 0.0), 1.0) * c / 2


def retry_after_seconds(value: str | None, now: float) -> float | None:
    """``Retry-After`` (RFC 9110 10.2.3) as seconds from ``now`` (unix seconds): a number of seconds,
    or an HTTP-date (``Wed, 21 Oct 2015 07:28:00 GMT``). None when absent or unreadable; a date in
    the past is 0."""
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    if text.isdigit():
        return float(int(text))
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None or when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - now)
