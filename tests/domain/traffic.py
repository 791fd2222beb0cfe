"""Seeded synthetic traffic for judge tests: per-window aggregates, never per-request loops."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from guardrail.domain.model import Histogram, Sample, Track

T0 = 1_700_000_000.0
BOUNDS_S = tuple(
    b / 1000 for b in (5, 10, 25, 50, 75, 100, 150, 200, 250, 300, 400, 500, 750, 1000, 2500, 5000)
)
_EDGES = np.log(np.array(BOUNDS_S))


@dataclass
class Traffic:
    rate: float = 200.0  # requests per second, both tracks
    weight: float = 0.10  # canary share
    p_err: float = 0.005
    err_ratio: float = 1.0
    median_s: float = 0.1
    sigma: float = 0.5
    canary_sigma: float | None = None
    canary_latency_factor: float = 1.0
    canary_traffic_factor: float = 1.0
    interval: float = 10.0

    def _hist(self, rng: np.random.Generator, n: int, median: float, sigma: float) -> Histogram:
        cdf = _normal_cdf((_EDGES - np.log(median)) / sigma)
        probs = np.diff(np.concatenate(([0.0], cdf, [1.0])))
        return Histogram(BOUNDS_S, tuple(int(c) for c in rng.multinomial(n, probs)))

    def window(
        self, rng: np.random.Generator, start: float, *, weight: float | None = None
    ) -> tuple[Sample, Sample]:
        w = self.weight if weight is None else weight
        nc = int(rng.poisson(self.rate * w * self.interval * self.canary_traffic_factor))
        nb = int(rng.poisson(self.rate * (1 - w) * self.interval))
        ec = int(rng.binomial(nc, min(self.p_err * self.err_ratio, 1.0)))
        eb = int(rng.binomial(nb, self.p_err))
        hc = self._hist(rng, nc, self.median_s * self.canary_latency_factor, self.canary_sigma or self.sigma)
        hb = self._hist(rng, nb, self.median_s, self.sigma)
        end = start + self.interval
        return (
            Sample(Track.CANARY, start, end, nc, ec, hc),
            Sample(Track.BASELINE, start, end, nb, eb, hb),
        )

    def history(self, rng: np.random.Generator, minutes: int = 10) -> list[Sample]:
        out = []
        for i in range(minutes):
            n = int(rng.poisson(self.rate * 60))
            start = T0 - 60 * (minutes - i)
            out.append(
                Sample(
                    Track.BASELINE,
                    start,
                    start + 60,
                    n,
                    int(rng.binomial(n, self.p_err)),
                    self._hist(rng, n, self.median_s, self.sigma),
                )
            )
        return out


def _normal_cdf(z: np.ndarray) -> np.ndarray:
    from scipy.special import ndtr

    return ndtr(z)
