"""Scenarios of the service-level benchmark (:mod:`bench.service_bench`), drawn window by window.

The judge benchmark (:mod:`bench.sim`) draws whole arrays up front because the canary's share of
traffic is fixed there. Here the share follows the rollout step the engine put in effect (10% ->
50% -> 100%), which is only known after the previous window was judged, so each run draws its
windows one at a time from its own generator: still per 10-s window, never per request. The
constants, the bucket layout, the error models and the public scenarios are those of bench/sim.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from bench.sim import (
    BOUNDS_S,
    BURST_MEAN,
    DURATION_S,
    LOOK_S,
    MEDIAN_MS,
    P_ERROR,
    PRE_WINDOW_S,
    PRE_WINDOWS,
    SCENARIOS,
    SIGMA,
    TOTAL_RATE,
    WEIGHT,
    Scenario,
    _errors,
    bucket_probs,
)
from guardrail.domain.model import Histogram, Sample, Track

T0 = 1_700_000_000.0  # deploy start (data time); the first canary window starts here

# Scenario models beyond the public ones.
INSTANCE_SHAPE, INSTANCE_SCALE = (
    2.0,
    0.5,
)  # per-instance error-rate multiplier G ~ Gamma(2, 0.5): mean 1, var 0.5
CANARY_INSTANCES, BASELINE_INSTANCES = 1, 9
SLOW_MEDIAN_MS, SLOW_SIGMA = 300.0, 0.6  # true p99 = 300 * exp(2.326 * 0.6) ≈ 1.21 s on both tracks
CRASH_FROM_S, CRASH_TO_S = 60.0, 300.0  # the canary stops serving at U[60, 300] s after T0
RAMP_TO, RAMP_OVER_S = 3.0, 1800.0  # gradual degradation: canary error ratio 1x -> 3x over 30 min
BURST_EVERY_S, BURST_LEN_S, BURST_P = 300.0, 30.0, 0.10  # intermittent: 30 s of 10% errors every 5 min


@dataclass(frozen=True, slots=True)
class ServiceScenario:
    """One situation replayed through the engine. ``regression``: a rollback is the right outcome."""

    name: str
    regression: bool
    what: str  # one line for the report
    error_ratio: float = 1.0  # canary error rate = error_ratio * baseline error rate
    canary_sigma: float = SIGMA
    canary_scale: float = 1.0  # every canary latency multiplied by this
    median_ms: float = MEDIAN_MS  # both tracks (slow-tail A/A changes both)
    sigma: float = SIGMA
    canary_traffic: float = 1.0  # canary requests = its share of traffic x this (throughput regression)
    incident_at_s: float | None = None  # both tracks' error rate x3 from this data time on
    ramp: bool = False  # total traffic 0.5x -> 1.5x over 30 min, then 1.5x
    bursty: bool = False  # compound-Poisson errors on both tracks (bench/sim.py)
    instances: bool = False  # per-instance Gamma error-rate heterogeneity (1 canary vs 9 baseline instances)
    crash: bool = False  # the canary stops serving at a random time
    gradual: bool = False  # canary error ratio ramps 1x -> RAMP_TO over RAMP_OVER_S
    bursts: bool = False  # intermittent error bursts on the canary
    history: bool = True  # ten pre-deploy baseline minutes are pushed first

    @classmethod
    def public(cls, sc: Scenario) -> ServiceScenario:
        """A public scenario of bench/sim.py, with the same models."""
        what = {
            "aa": "A/A: nothing changes",
            "shared_incident": "both tracks 0.5% -> 1.5% errors at minute 10",
            "traffic_ramp": "total traffic 0.5x -> 1.5x over 30 min (1.5x after)",
            "bursty_errors": f"compound-Poisson errors on both tracks (clusters of mean size {BURST_MEAN:g})",
            "throughput_-30%": "canary serves 70% of its share of requests",
            "latency_x1.2": "every canary latency x1.2",
        }.get(sc.name, "")
        if not what and sc.kind == "errors":
            what = f"canary error rate x{sc.error_ratio:g}"
        if not what and sc.kind == "latency":
            what = f"canary lognormal sigma {sc.canary_sigma:g} (tail only)"
        return cls(
            name=sc.name,
            regression=sc.regression,
            what=what,
            error_ratio=sc.error_ratio,
            canary_sigma=sc.canary_sigma,
            canary_scale=sc.canary_scale,
            canary_traffic=sc.canary_rate / (TOTAL_RATE * WEIGHT),
            incident_at_s=sc.incident_at_s,
            ramp=sc.ramp,
            bursty=sc.bursty,
        )


SCENARIOS_SERVICE: tuple[ServiceScenario, ...] = (
    *(ServiceScenario.public(sc) for sc in SCENARIOS),
    ServiceScenario(
        "overdispersed_aa_no_history",
        False,
        "A/A with compound-Poisson errors on both tracks (as bursty_errors)",
        bursty=True,
        history=False,
    ),
    ServiceScenario(
        "one_instance_canary",
        False,
        "A/A, per-instance error rate p x Gamma(2, 0.5) per window; canary 1 instance, baseline 9 (at every step)",
        instances=True,
        history=False,
    ),
    ServiceScenario(
        "slow_tail_aa",
        False,
        "A/A, both tracks lognormal median 300 ms, sigma 0.6 (p99 ≈ 1.2 s, above the 1 s page rule)",
        median_ms=SLOW_MEDIAN_MS,
        sigma=SLOW_SIGMA,
        canary_sigma=SLOW_SIGMA,
    ),
    ServiceScenario(
        "crash_loop",
        True,
        "canary healthy, then serves nothing from U[60, 300] s on; time counted from the first empty window",
        crash=True,
    ),
    ServiceScenario(
        "gradual_degradation",
        True,
        "canary error ratio ramps linearly 1x -> 3x over 30 min",
        gradual=True,
    ),
    ServiceScenario(
        "intermittent_bursts",
        True,
        "canary healthy except 30 s of 10% errors every 5 min (first at U[0, 300) s)",
        bursts=True,
    ),
)
BY_NAME = {sc.name: sc for sc in SCENARIOS_SERVICE}


@lru_cache(maxsize=64)
def _probs(median_ms: float, sigma: float) -> np.ndarray:
    return bucket_probs(median_ms, sigma)


def _histogram(rng: np.random.Generator, n: int, median_ms: float, sigma: float) -> Histogram:
    return Histogram(BOUNDS_S, tuple(rng.multinomial(n, _probs(median_ms, sigma)).tolist()))


def _overlap(a0: float, a1: float, b0: float, b1: float) -> float:
    return max(0.0, min(a1, b1) - max(a0, b0))


class RunModel:
    """One run's traffic: windows drawn on demand at the canary weight in effect.

    Run-level draws (the crash time, the burst offset) are made first, so a run's traffic depends
    only on its generator and on the weights the engine chose."""

    def __init__(self, sc: ServiceScenario, rng: np.random.Generator) -> None:
        self.sc = sc
        self.rng = rng
        self.stop_s = float(rng.uniform(CRASH_FROM_S, CRASH_TO_S)) if sc.crash else None
        self.burst_offset_s = float(rng.uniform(0.0, BURST_EVERY_S)) if sc.bursts else None

    @property
    def first_empty_s(self) -> float | None:
        """Start (seconds after T0) of the first window in which the crashed canary serves nothing."""
        return None if self.stop_s is None else math.ceil(self.stop_s / LOOK_S) * LOOK_S

    # --- per-window models ------------------------------------------------------------------------
    def _load(self, mid: float) -> float:
        return 0.5 + min(mid, DURATION_S) / DURATION_S if self.sc.ramp else 1.0

    def _p_base(self, mid: float) -> float:
        inc = self.sc.incident_at_s
        return 3.0 * P_ERROR if inc is not None and mid >= inc else P_ERROR

    def _instance_errors(self, n: int, p: float, instances: int) -> int:
        rng = self.rng
        per = rng.multinomial(n, np.full(instances, 1.0 / instances)) if instances > 1 else np.array([n])
        g = rng.gamma(INSTANCE_SHAPE, INSTANCE_SCALE, size=instances)
        return int(rng.binomial(per, np.minimum(p * g, 1.0)).sum())

    def _errors(self, n: int, p: float, instances: int) -> int:
        if self.sc.instances:
            return self._instance_errors(n, p, instances)
        return int(_errors(self.rng, np.int64(n), p, self.sc.bursty))

    def _canary_errors(self, n: int, start: float, end: float, p_base: float, mid: float) -> int:
        sc = self.sc
        ratio = sc.error_ratio
        if sc.gradual:
            ratio = 1.0 + (RAMP_TO - 1.0) * min(mid / RAMP_OVER_S, 1.0)
        p = min(p_base * ratio, 1.0)
        if self.burst_offset_s is None:
            return self._errors(n, p, CANARY_INSTANCES)
        inside = 0.0  # seconds of this window inside a burst
        j = max(0, math.floor((start - self.burst_offset_s) / BURST_EVERY_S))
        while (b0 := self.burst_offset_s + j * BURST_EVERY_S) < end:
            inside += _overlap(start, end, b0, b0 + BURST_LEN_S)
            j += 1
        n_burst = int(self.rng.binomial(n, inside / (end - start))) if inside > 0 else 0
        return int(self.rng.binomial(n_burst, BURST_P)) + self._errors(n - n_burst, p, CANARY_INSTANCES)

    def window(self, k: int, weight: float) -> tuple[Sample, Sample]:
        """Canary and baseline samples of window k ([T0 + 10k, T0 + 10k + 10)) at canary share ``weight``."""
        sc, rng = self.sc, self.rng
        start_s = k * LOOK_S
        end_s = start_s + LOOK_S
        mid = start_s + LOOK_S / 2
        load = self._load(mid)
        live = 1.0  # share of the window in which the canary serves
        if self.stop_s is not None:
            live = min(max((self.stop_s - start_s) / LOOK_S, 0.0), 1.0)
        nc = (
            int(rng.poisson(TOTAL_RATE * weight * sc.canary_traffic * LOOK_S * load * live))
            if live > 0
            else 0
        )
        nb = int(rng.poisson(TOTAL_RATE * (1.0 - weight) * LOOK_S * load))
        p_base = self._p_base(mid)
        ec = self._canary_errors(nc, start_s, end_s, p_base, mid) if nc else 0
        eb = self._errors(nb, p_base, BASELINE_INSTANCES)
        hc = _histogram(rng, nc, sc.median_ms * sc.canary_scale, sc.canary_sigma)
        hb = _histogram(rng, nb, sc.median_ms, sc.sigma)
        s, e = T0 + start_s, T0 + end_s
        return Sample(Track.CANARY, s, e, nc, ec, hc), Sample(Track.BASELINE, s, e, nb, eb, hb)

    def history(self) -> list[Sample]:
        """Ten 60-s baseline windows at full traffic ending at T0 (the scenario's baseline models)."""
        if not self.sc.history:
            return []
        out = []
        for i in range(PRE_WINDOWS):
            start = T0 - (PRE_WINDOWS - i) * PRE_WINDOW_S
            n = int(self.rng.poisson(TOTAL_RATE * PRE_WINDOW_S))
            err = self._errors(n, P_ERROR, BASELINE_INSTANCES)
            lat = _histogram(self.rng, n, self.sc.median_ms, self.sc.sigma)
            out.append(Sample(Track.BASELINE, start, start + PRE_WINDOW_S, n, err, lat))
        return out
