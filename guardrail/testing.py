"""Public test helpers: synthetic traffic, a recording deploy adapter and a settable clock.

Users write their own tests with these (and guardrail's tests use them): no network, no patching.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.special import ndtr

from guardrail.domain.model import Histogram, Sample, Step, Track
from guardrail.ports import ActionResult, DeployTarget

T0 = 1_700_000_000.0
BOUNDS_S = tuple(b / 1000 for b in (5, 10, 25, 50, 75, 100, 150, 200, 250, 300, 400, 500, 750, 1000, 2500, 5000))
_EDGES = np.log(np.array(BOUNDS_S))


@dataclass
class SyntheticTraffic:
    """Per-window aggregates of a service with a baseline and a canary track (seeded, vectorised:
    no per-request loop). Poisson requests, binomial errors, lognormal latency in Prometheus-style
    buckets. Knobs make the canary worse in one way or another."""

    rate: float = 200.0  # requests per second, both tracks together
    weight: float = 0.10  # canary share of traffic
    p_err: float = 0.005
    err_ratio: float = 1.0  # canary error rate = p_err * err_ratio
    median_s: float = 0.1
    sigma: float = 0.5
    canary_sigma: float | None = None  # a heavier tail on the canary
    canary_latency_factor: float = 1.0  # every canary latency multiplied
    canary_traffic_factor: float = 1.0  # the canary gets fewer (or more) requests than its share
    interval: float = 10.0

    def histogram(self, rng: np.random.Generator, n: int, median: float, sigma: float) -> Histogram:
        cdf = ndtr((_EDGES - np.log(median)) / sigma)
        probs = np.diff(np.concatenate(([0.0], cdf, [1.0])))
        return Histogram(BOUNDS_S, tuple(int(c) for c in rng.multinomial(n, probs)))

    def window(self, rng: np.random.Generator, start: float, *, weight: float | None = None) -> tuple[Sample, Sample]:
        """(canary, baseline) samples of the window [start, start + interval)."""
        w = self.weight if weight is None else weight
        nc = int(rng.poisson(self.rate * w * self.interval * self.canary_traffic_factor))
        nb = int(rng.poisson(self.rate * (1 - w) * self.interval))
        ec = int(rng.binomial(nc, min(self.p_err * self.err_ratio, 1.0)))
        eb = int(rng.binomial(nb, self.p_err))
        hc = self.histogram(rng, nc, self.median_s * self.canary_latency_factor, self.canary_sigma or self.sigma)
        hb = self.histogram(rng, nb, self.median_s, self.sigma)
        end = start + self.interval
        return Sample(Track.CANARY, start, end, nc, ec, hc), Sample(Track.BASELINE, start, end, nb, eb, hb)

    def history(self, rng: np.random.Generator, minutes: int = 10, *, end: float = T0) -> list[Sample]:
        """Baseline-only minutes before ``end`` (the pre-deploy window)."""
        out = []
        for i in range(minutes):
            n = int(rng.poisson(self.rate * 60))
            start = end - 60 * (minutes - i)
            out.append(Sample(Track.BASELINE, start, start + 60, n, int(rng.binomial(n, self.p_err)),
                              self.histogram(rng, n, self.median_s, self.sigma)))
        return out


def sample_json(s: Sample) -> dict[str, object]:
    """A sample as the push API takes it (``POST /api/v1/deploys/{id}/samples``)."""
    out: dict[str, object] = {"track": s.track.value, "start": s.start, "end": s.end, "requests": s.requests,
                              "errors": s.errors}
    if s.latency is not None:
        out["latency_histogram"] = {"bounds": list(s.latency.bounds), "counts": list(s.latency.counts)}
    if s.latencies:
        out["latencies"] = list(s.latencies)
    if s.gauges:
        out["gauges"] = dict(s.gauges)
    return out


@dataclass
class RecordingDeployAdapter:
    """A deploy adapter that records every call and fails on demand (drills and tests)."""

    name: str = "recording"
    fail_steps: set[int] = field(default_factory=set)
    fail_rollbacks: int = 0  # the first N rollback attempts fail
    fail_finalize: bool = False
    calls: list[tuple[str, str, int | None]] = field(default_factory=list)  # (method, action_key, step)
    weight: float = 0.0  # the canary weight currently in effect (percent)

    async def apply_step(self, target: DeployTarget, step: Step, index: int, total: int) -> ActionResult:
        self.calls.append(("apply_step", target.action_key, index))
        if index in self.fail_steps:
            return ActionResult(False, f"step {index} refused (drill)")
        if step.weight is not None:
            self.weight = step.weight
        return ActionResult(True, f"{target.version} on {step.describe()}")

    async def finalize(self, target: DeployTarget) -> ActionResult:
        self.calls.append(("finalize", target.action_key, None))
        if self.fail_finalize:
            return ActionResult(False, "finalize refused (drill)")
        self.weight = 100.0
        return ActionResult(True, f"{target.version} fully promoted")

    async def rollback(self, target: DeployTarget, reason: str) -> ActionResult:
        self.calls.append(("rollback", target.action_key, None))
        if self.fail_rollbacks > 0:
            self.fail_rollbacks -= 1
            return ActionResult(False, "rollback refused (drill)")
        self.weight = 0.0
        return ActionResult(True, f"back on {target.previous_version}")

    def methods(self) -> list[str]:
        return [c[0] for c in self.calls]


@dataclass
class ManualClock:
    """A wall clock the test moves by hand."""

    now: float = T0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
