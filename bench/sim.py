"""Seeded traffic simulator of the public benchmark, vectorised over runs.

Every array is shaped ``(runs, windows)`` or ``(runs, windows, buckets)``: requests are drawn per
10-s window (Poisson), errors per window (binomial, or compound Poisson for the bursty scenario)
and latency bucket counts per window (multinomial over the lognormal's bucket probabilities).
Nothing is ever simulated per request.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.special import ndtr

# Traffic and timing.
TOTAL_RATE = 200.0  # req/s over both tracks
WEIGHT = 0.10  # canary share of traffic assigned by the rollout
LOOK_S = 10.0  # one check ("look") per 10-s window
N_LOOKS = 180  # 30 minutes
DURATION_S = LOOK_S * N_LOOKS
PRE_WINDOW_S = 60.0  # pre-deploy history: ten 60-s baseline windows, all traffic on the baseline
PRE_WINDOWS = 10

# Errors and latency of a healthy service.
P_ERROR = 0.005
MEDIAN_MS = 100.0
SIGMA = 0.5
BURST_MEAN = 4.0  # bursty scenario: mean cluster size (geometric on 1, 2, ...)

# Prometheus-style bucket upper bounds; the +Inf bucket is implicit (last count).
BOUNDS_MS = (5, 10, 25, 50, 75, 100, 150, 200, 250, 300, 400, 500, 750, 1000, 2500, 5000)
BOUNDS_S = tuple(b / 1000.0 for b in BOUNDS_MS)
N_BUCKETS = len(BOUNDS_MS) + 1


@dataclass(frozen=True, slots=True)
class Scenario:
    """One simulated situation. ``kind`` names what regressed (``none`` for no regression)."""

    name: str
    kind: str  # "none", "errors", "latency" or "throughput"
    error_ratio: float = 1.0  # canary error rate = error_ratio * baseline error rate
    canary_sigma: float = SIGMA  # lognormal sigma of the canary (tail-only regression)
    canary_scale: float = 1.0  # every canary latency multiplied by this
    canary_rate: float = TOTAL_RATE * WEIGHT  # canary req/s (at ramp factor 1)
    incident_at_s: float | None = None  # both tracks' error rate x3 from this data time on
    ramp: bool = False  # total traffic ramps linearly 0.5x -> 1.5x over the 30 minutes
    bursty: bool = False  # errors arrive in clusters (compound Poisson)

    @property
    def regression(self) -> bool:
        return self.kind != "none"


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("aa", "none"),
    Scenario("errors_x1.5", "errors", error_ratio=1.5),
    Scenario("errors_x2", "errors", error_ratio=2.0),
    Scenario("errors_x5", "errors", error_ratio=5.0),
    Scenario("p99_tail_+20%", "latency", canary_sigma=0.578),
    Scenario("p99_tail_+50%", "latency", canary_sigma=0.674),
    Scenario("latency_x1.2", "latency", canary_scale=1.2),
    Scenario("throughput_-30%", "throughput", canary_rate=TOTAL_RATE * WEIGHT * 0.7),
    Scenario("shared_incident", "none", incident_at_s=600.0),
    Scenario("traffic_ramp", "none", ramp=True),
    Scenario("bursty_errors", "none", bursty=True),
)


def bucket_probs(median_ms: float, sigma: float) -> np.ndarray:
    """Probability of each bucket (the +Inf one last) under a lognormal latency."""
    cdf = ndtr((np.log(np.asarray(BOUNDS_MS, dtype=float)) - math.log(median_ms)) / sigma)
    return np.diff(np.concatenate(([0.0], cdf, [1.0])))


def exceedance(bound_ms: float, median_ms: float = MEDIAN_MS, sigma: float = SIGMA) -> float:
    """P(latency > bound) under a lognormal latency."""
    return float(ndtr(-(math.log(bound_ms) - math.log(median_ms)) / sigma))


def exceedance_bound(q: float) -> float:
    """The bucket bound (ms) whose healthy exceedance probability is closest to ``1 - q`` in log terms
    (300 ms for p99, 250 ms for p95)."""
    gaps = [abs(math.log(exceedance(b) / (1.0 - q))) for b in BOUNDS_MS]
    return float(BOUNDS_MS[int(np.argmin(gaps))])


@dataclass(frozen=True, slots=True)
class SimData:
    """Counts of ``runs`` independent deploys. Canary/baseline arrays are per 10-s look window."""

    canary_req: np.ndarray  # (runs, N_LOOKS)
    canary_err: np.ndarray
    canary_lat: np.ndarray  # (runs, N_LOOKS, N_BUCKETS)
    base_req: np.ndarray
    base_err: np.ndarray
    base_lat: np.ndarray
    pre_req: np.ndarray  # (runs, PRE_WINDOWS): baseline before the deploy
    pre_err: np.ndarray
    pre_lat: np.ndarray  # (runs, PRE_WINDOWS, N_BUCKETS)

    @property
    def runs(self) -> int:
        return self.canary_req.shape[0]


def _errors(
    rng: np.random.Generator, requests: np.ndarray, p: np.ndarray | float, bursty: bool
) -> np.ndarray:
    if not bursty:
        return rng.binomial(requests, p)
    # Compound Poisson: clusters ~ Poisson(p * requests / BURST_MEAN), each of geometric size (mean
    # BURST_MEAN). A sum of k such geometrics is k + NegativeBinomial(k, 1 / BURST_MEAN).
    clusters = rng.poisson(p * requests / BURST_MEAN)
    extra = rng.negative_binomial(np.maximum(clusters, 1), 1.0 / BURST_MEAN)
    return np.minimum(clusters + np.where(clusters > 0, extra, 0), requests)


def simulate(sc: Scenario, runs: int, rng: np.random.Generator) -> SimData:
    mid = (np.arange(N_LOOKS) + 0.5) * LOOK_S  # window midpoints: the ramp's exact window mean
    load = 0.5 + mid / DURATION_S if sc.ramp else np.ones(N_LOOKS)
    base_rate = TOTAL_RATE * (1.0 - WEIGHT)
    canary_req = rng.poisson(sc.canary_rate * LOOK_S * load, size=(runs, N_LOOKS))
    base_req = rng.poisson(base_rate * LOOK_S * load, size=(runs, N_LOOKS))

    p_base = np.full(N_LOOKS, P_ERROR)
    if sc.incident_at_s is not None:
        p_base[mid >= sc.incident_at_s] = 3.0 * P_ERROR
    canary_err = _errors(rng, canary_req, np.minimum(p_base * sc.error_ratio, 1.0), sc.bursty)
    base_err = _errors(rng, base_req, p_base, sc.bursty)

    healthy = bucket_probs(MEDIAN_MS, SIGMA)
    canary_lat = rng.multinomial(canary_req, bucket_probs(MEDIAN_MS * sc.canary_scale, sc.canary_sigma))
    base_lat = rng.multinomial(base_req, healthy)

    pre_req = rng.poisson(TOTAL_RATE * PRE_WINDOW_S, size=(runs, PRE_WINDOWS))
    pre_err = _errors(rng, pre_req, P_ERROR, sc.bursty)
    pre_lat = rng.multinomial(pre_req, healthy)
    return SimData(
        canary_req, canary_err, canary_lat, base_req, base_err, base_lat, pre_req, pre_err, pre_lat
    )
