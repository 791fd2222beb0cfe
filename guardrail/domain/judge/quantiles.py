"""Latency quantiles from raw values: a bounded-memory log sketch and time-uniform quantile bounds.

The sketch keeps counts in logarithmic buckets (like DDSketch): any quantile it returns is within a
relative error ``REL_ERR`` of a true sample quantile, and memory is bounded by ``MAX_BUCKETS`` whatever
the request count (the lowest buckets are merged when the range grows too wide).

Confidence sequence (Howard & Ramdas, "Sequential estimation of quantiles", 2022, Thm 2): with
probability >= 1 - alpha, for all t at once, sup_x |F_t(x) - F(x)| <= eps_t with
eps_t = 0.85 * sqrt((log log(e t) + 0.8 log(1612 / alpha)) / t). So the q-quantile lies in
[Q_t(q - eps_t), Q_t(q + eps_t)] at every t, widened by the sketch's relative error.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

REL_ERR = 0.01
_GAMMA = (1 + REL_ERR) / (1 - REL_ERR)
_LOG_GAMMA = math.log(_GAMMA)
MAX_BUCKETS = 2048
MIN_VALUE = 1e-6  # values below one microsecond go to the lowest bucket


class LogSketch:
    __slots__ = ("buckets", "count")

    def __init__(self) -> None:
        self.buckets: dict[int, int] = {}
        self.count = 0

    def add_many(self, values: Iterable[float]) -> None:
        b = self.buckets
        for v in values:
            k = math.ceil(math.log(max(v, MIN_VALUE)) / _LOG_GAMMA)
            b[k] = b.get(k, 0) + 1
            self.count += 1
        if len(b) > MAX_BUCKETS:
            keys = sorted(b)
            merged = sum(b.pop(k) for k in keys[: len(keys) - MAX_BUCKETS + 1])
            b[keys[len(keys) - MAX_BUCKETS]] = b.get(keys[len(keys) - MAX_BUCKETS], 0) + merged

    def quantile(self, q: float) -> float:
        """Value at rank ceil(q * count) (q clipped to [0, 1]); nan when empty."""
        if self.count == 0:
            return math.nan
        rank = min(max(math.ceil(q * self.count), 1), self.count)
        seen = 0
        for k in sorted(self.buckets):
            seen += self.buckets[k]
            if seen >= rank:
                return 2 * _GAMMA**k / (_GAMMA + 1)  # bucket midpoint in the relative sense
        return math.inf  # pragma: no cover - rank <= count


def dkw_radius(t: int, alpha: float) -> float:
    """Time-uniform radius of the empirical CDF after t observations (Howard & Ramdas 2022)."""
    if t <= 0:
        return 1.0
    return 0.85 * math.sqrt((math.log(math.log(math.e * t)) + 0.8 * math.log(1612 / alpha)) / t)


def quantile_bounds(sketch: LogSketch, q: float, alpha: float) -> tuple[float, float]:
    """Anytime-valid (lower, upper) bounds of the q-quantile; 0 / inf where the data cannot tell."""
    eps = dkw_radius(sketch.count, alpha)
    lo = 0.0 if q - eps <= 0 else sketch.quantile(q - eps) * (1 - REL_ERR)
    hi = math.inf if q + eps >= 1 else sketch.quantile(q + eps) * (1 + REL_ERR)
    return lo, hi


def always_valid_p(
    sketch_c: LogSketch, sketch_b: LogSketch, q: float, ratio: float, canary_higher: bool
) -> float:
    """Smallest alpha at which the bounds separate: canary_lo > ratio * baseline_hi (or the mirror)."""

    def separated(a: float) -> bool:
        c_lo, c_hi = quantile_bounds(sketch_c, q, a / 2)
        b_lo, b_hi = quantile_bounds(sketch_b, q, a / 2)
        return c_lo > ratio * b_hi if canary_higher else c_hi < ratio * b_lo

    if not separated(0.999):
        return 1.0
    lo, hi = 1e-12, 0.999  # separated(hi) is True; find the smallest such alpha on a log scale
    if separated(lo):
        return lo
    for _ in range(30):
        mid = math.sqrt(lo * hi)
        if separated(mid):
            hi = mid
        else:
            lo = mid
    return hi
