"""The methods guardrail is compared against, vectorised over runs.

Each method takes a :class:`~bench.sim.SimData` and returns, per run, the data time in seconds
after deploy start of the first look that says FAIL (``nan`` when it never fails in 30 minutes).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import ndtri

from bench.sim import (
    BOUNDS_MS,
    LOOK_S,
    MEDIAN_MS,
    N_LOOKS,
    P_ERROR,
    SCENARIOS,
    TOTAL_RATE,
    WEIGHT,
    Scenario,
    SimData,
    exceedance,
    exceedance_bound,
)

ALPHA = 0.01  # deploy-level false-rollback budget
LOOK_TIMES = LOOK_S * np.arange(1, N_LOOKS + 1)  # look k (1-based) is at t = 10 k s
C99_MS = exceedance_bound(0.99)
C95_MS = exceedance_bound(0.95)
ORACLE_NULL = next(s for s in SCENARIOS if s.name == "errors_x2")  # oracle tuning on no-regression data


def first_time(hit: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Time of the first True along the last axis, ``nan`` where there is none."""
    any_hit = hit.any(axis=-1)
    return np.where(any_hit, times[np.argmax(hit, axis=-1)], np.nan)


def count_above(lat: np.ndarray, bound_ms: float) -> np.ndarray:
    """Requests slower than ``bound_ms`` (a bucket bound) from bucket counts on the last axis."""
    return lat[..., BOUNDS_MS.index(bound_ms) + 1 :].sum(axis=-1)


def histogram_quantile(q: float, lat: np.ndarray) -> np.ndarray:
    """Prometheus ``histogram_quantile`` (ms) over bucket counts on the last axis: linear interpolation
    inside the bucket holding rank ``q * total``; the +Inf bucket answers the highest finite bound;
    ``nan`` without data."""
    cum = np.cumsum(lat, axis=-1)
    total = cum[..., -1]
    rank = q * total
    b = np.argmax(cum >= rank[..., None], axis=-1)
    lower = np.array((0.0, *BOUNDS_MS), dtype=float)[b]
    upper = np.array((*BOUNDS_MS, BOUNDS_MS[-1]), dtype=float)[b]
    below = np.where(b > 0, np.take_along_axis(cum, np.maximum(b - 1, 0)[..., None], axis=-1)[..., 0], 0)
    in_bucket = np.take_along_axis(lat, b[..., None], axis=-1)[..., 0]
    with np.errstate(invalid="ignore", divide="ignore"):
        value = lower + (upper - lower) * (rank - below) / in_bucket
    value = np.where(b == lat.shape[-1] - 1, float(BOUNDS_MS[-1]), value)
    return np.where(total > 0, value, np.nan)


# --------------------------------------------------------------------------------------------
# Oracle: Wald's SPRT that knows the true effect.


def _binomial_llr(
    x: np.ndarray, n: np.ndarray, pi0: np.ndarray | float, pi1: np.ndarray | float
) -> np.ndarray:
    return x * np.log(pi1 / pi0) + (n - x) * np.log((1.0 - pi1) / (1.0 - pi0))


def _share_alternative(w: np.ndarray, r: float) -> np.ndarray:
    """pi = r w / (r w + 1 - w): the canary's share of events when its rate is r times the baseline's."""
    return r * w / (r * w + 1.0 - w)


def oracle_ratio(sc: Scenario) -> float:
    """The true canary/baseline event-rate ratio the oracle tests for (errors or slow requests)."""
    if sc.kind == "errors":
        return sc.error_ratio
    return exceedance(C99_MS, MEDIAN_MS * sc.canary_scale, sc.canary_sigma) / exceedance(C99_MS)


def oracle_sprt(d: SimData, sc: Scenario, alpha: float = ALPHA) -> np.ndarray:
    """One-sided SPRT (stops only on FAIL) at threshold ln(1/alpha); the errors-x2 oracle on
    no-regression scenarios."""
    effect = sc if sc.regression else ORACLE_NULL
    if effect.kind == "throughput":
        n = d.canary_req + d.base_req
        pi1 = effect.canary_rate / (effect.canary_rate + TOTAL_RATE * (1.0 - WEIGHT))
        llr = _binomial_llr(d.canary_req, n, WEIGHT, pi1)
    else:
        total = np.maximum(d.canary_req + d.base_req, 1)
        w = np.clip(d.canary_req / total, 1e-9, 1.0 - 1e-9)  # each window's own canary exposure share
        if effect.kind == "errors":
            x, y = d.canary_err, d.base_err
        else:
            x, y = count_above(d.canary_lat, C99_MS), count_above(d.base_lat, C99_MS)
        llr = _binomial_llr(x, x + y, w, _share_alternative(w, oracle_ratio(effect)))
    return first_time(np.cumsum(llr, axis=1) >= math.log(1.0 / alpha), LOOK_TIMES)


def wald_expected(sc: Scenario, alpha: float = ALPHA) -> tuple[float, float]:
    """Wald's approximation (beta = 0) of the oracle's expected sample size: (events, seconds)."""
    base_rate = TOTAL_RATE * (1.0 - WEIGHT)
    if sc.kind == "throughput":
        pi0, pi1 = WEIGHT, sc.canary_rate / (sc.canary_rate + base_rate)
        event_rate = sc.canary_rate + base_rate
    else:
        r = oracle_ratio(sc)
        pi0, pi1 = WEIGHT, _share_alternative(np.float64(WEIGHT), r)
        q = P_ERROR if sc.kind == "errors" else exceedance(C99_MS)
        event_rate = q * (r * TOTAL_RATE * WEIGHT + base_rate)
    kl = pi1 * math.log(pi1 / pi0) + (1 - pi1) * math.log((1 - pi1) / (1 - pi0))
    n = math.log(1.0 / alpha) / kl
    return n, n / event_rate


# --------------------------------------------------------------------------------------------
# Naive z-tests peeked at every look.


def _z_two(x1: np.ndarray, n1: np.ndarray, x2: np.ndarray, n2: np.ndarray) -> np.ndarray:
    """Pooled two-proportion z of rate 1 minus rate 2 (0 where undefined)."""
    n1f, n2f = np.maximum(n1, 1), np.maximum(n2, 1)
    p = (x1 + x2) / np.maximum(n1 + n2, 1)
    se = np.sqrt(p * (1.0 - p) * (1.0 / n1f + 1.0 / n2f))
    with np.errstate(invalid="ignore", divide="ignore"):
        z = (x1 / n1f - x2 / n2f) / se
    return np.where(se > 0, z, 0.0)


def naive_z(d: SimData, alpha: float = ALPHA) -> np.ndarray:
    """One-sided z-tests on cumulative counts at every look, alpha/4 each: errors, requests slower
    than the p99 and p95 thresholds, and the canary share of requests (decrease)."""
    z_crit = ndtri(1.0 - alpha / 4)
    cr, br = np.cumsum(d.canary_req, axis=1), np.cumsum(d.base_req, axis=1)
    reject = _z_two(np.cumsum(d.canary_err, axis=1), cr, np.cumsum(d.base_err, axis=1), br) > z_crit
    for c in (C99_MS, C95_MS):
        xc = np.cumsum(count_above(d.canary_lat, c), axis=1)
        xb = np.cumsum(count_above(d.base_lat, c), axis=1)
        reject |= _z_two(xc, cr, xb, br) > z_crit
    n = np.maximum(cr + br, 1)
    share_z = (cr / n - WEIGHT) / np.sqrt(WEIGHT * (1.0 - WEIGHT) / n)
    reject |= share_z < -z_crit
    return first_time(reject, LOOK_TIMES)


# --------------------------------------------------------------------------------------------
# Argo Rollouts / Flagger style fixed thresholds.

THRESHOLD_ERROR_RATE = 0.01
THRESHOLD_P99_MS = 400.0
THRESHOLD_INTERVAL_LOOKS = 6  # the PromQL range: last 60 s
THRESHOLD_FAILURE_LIMIT = 3  # consecutive failing checks


def _rolling_sum(a: np.ndarray, width: int) -> np.ndarray:
    """Sum over the last ``width`` windows along axis 1 (fewer at the start)."""
    cs = np.cumsum(a, axis=1)
    out = cs.copy()
    out[:, width:] -= cs[:, :-width]
    return out


def threshold_rule(d: SimData) -> np.ndarray:
    """Canary error rate over the last 60 s > 1% or canary p99 over the last 60 s > 400 ms, for 3
    consecutive checks."""
    req = _rolling_sum(d.canary_req, THRESHOLD_INTERVAL_LOOKS)
    err = _rolling_sum(d.canary_err, THRESHOLD_INTERVAL_LOOKS)
    p99 = histogram_quantile(0.99, _rolling_sum(d.canary_lat, THRESHOLD_INTERVAL_LOOKS))
    bad = (err > THRESHOLD_ERROR_RATE * req) | (np.nan_to_num(p99) > THRESHOLD_P99_MS)
    streak = bad.copy()
    for lag in range(1, THRESHOLD_FAILURE_LIMIT):
        streak[:, lag:] &= bad[:, :-lag]
        streak[:, :lag] = False
    return first_time(streak, LOOK_TIMES)


# --------------------------------------------------------------------------------------------
# Kayenta style: NetflixACAJudge + MannWhitneyClassifier on 60-s points.

KAYENTA_POINT_LOOKS = 6  # 60-s points
KAYENTA_FIRST_MINUTE = 3
KAYENTA_CONFIDENCE = 0.98
KAYENTA_TOLERANCE = 0.25
KAYENTA_FAIL_SCORE = 75.0


def _tie_term(x: np.ndarray) -> np.ndarray:
    """sum(t^3 - t) over groups of tied values in each row."""
    rows, m = x.shape
    s = np.sort(x, axis=1)
    new_group = np.ones_like(s, dtype=bool)
    new_group[:, 1:] = s[:, 1:] != s[:, :-1]
    gid = np.cumsum(new_group, axis=1) - 1 + (np.arange(rows) * m)[:, None]
    t = np.bincount(gid.ravel(), minlength=rows * m).astype(float)
    return (t**3 - t).reshape(rows, m).sum(axis=1)


def mann_whitney_classify(canary: np.ndarray, base: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Kayenta's MannWhitneyClassifier (direction either), per row: returns (high, low).

    The Hodges-Lehmann estimate is the median of the pairwise differences canary - baseline; the
    98% interval inverts the normal approximation of the rank-sum statistic with continuity
    correction and tie-corrected variance, which selects order statistics of those differences.
    Kayenta's bounds are +-tolerance * |estimate|: High when the interval's lower end is above
    0.25 |estimate| (and the canary mean is >= the baseline mean), Low symmetrically.
    """
    rows, n = canary.shape
    m = base.shape[1]
    nm = n * m
    diffs = np.sort((canary[:, :, None] - base[:, None, :]).reshape(rows, nm), axis=1)
    estimate = np.abs(np.median(diffs, axis=1))
    ties = _tie_term(canary) + _tie_term(base)
    sigma = np.sqrt(nm / 12.0 * ((n + m + 1) - ties / ((n + m) * (n + m - 1))))
    z = ndtri(1.0 - (1.0 - KAYENTA_CONFIDENCE) / 2.0)
    # #{differences > mu} must reach nm/2 +- (z sigma + 1/2): mu is the matching order statistic.
    j_lo = np.clip(np.floor(nm / 2.0 - 0.5 - z * sigma).astype(int), 0, nm - 1)
    j_hi = np.clip(np.floor(nm / 2.0 + 0.5 + z * sigma).astype(int), 0, nm - 1)
    lower = np.take_along_axis(diffs, j_lo[:, None], axis=1)[:, 0]
    upper = np.take_along_axis(diffs, j_hi[:, None], axis=1)[:, 0]
    mean_c, mean_b = canary.mean(axis=1), base.mean(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        deviation = np.where((mean_c != 0) & (mean_b != 0), mean_c / mean_b, np.nan)
    identical = (np.sort(canary, axis=1) == np.sort(base, axis=1)).all(axis=1)
    high = ~identical & (lower > KAYENTA_TOLERANCE * estimate) & (deviation >= 1.0)
    low = ~identical & (upper < -KAYENTA_TOLERANCE * estimate) & (deviation <= 1.0)
    return high, low


def _points(a: np.ndarray) -> np.ndarray:
    """Per-look counts -> per-minute counts (axis 1)."""
    runs, looks = a.shape[:2]
    return a.reshape(runs, looks // KAYENTA_POINT_LOOKS, KAYENTA_POINT_LOOKS, *a.shape[2:]).sum(axis=2)


def kayenta_style(d: SimData) -> np.ndarray:
    """Judged every 60 s from minute 3 on all 60-s points so far: error rate (critical), p95, p99 and
    throughput per unit of weight; FAIL when the critical metric fails or the score is < 75."""
    c_req, b_req = _points(d.canary_req), _points(d.base_req)
    c_lat, b_lat = _points(d.canary_lat), _points(d.base_lat)
    with np.errstate(invalid="ignore", divide="ignore"):
        metrics = [  # (canary points, baseline points, critical); NaN points are replaced by 0
            (_points(d.canary_err) / c_req, _points(d.base_err) / b_req, True),
            (histogram_quantile(0.95, c_lat), histogram_quantile(0.95, b_lat), False),
            (histogram_quantile(0.99, c_lat), histogram_quantile(0.99, b_lat), False),
            (c_req / WEIGHT, b_req / (1.0 - WEIGHT), False),
        ]
    metrics = [(np.nan_to_num(c), np.nan_to_num(b), crit) for c, b, crit in metrics]
    minutes = c_req.shape[1]
    fail_t = np.full(d.runs, np.nan)
    for minute in range(KAYENTA_FIRST_MINUTE, minutes + 1):
        alive = np.flatnonzero(np.isnan(fail_t))
        if alive.size == 0:
            break
        failing = np.zeros(alive.size)
        critical_fail = np.zeros(alive.size, dtype=bool)
        for canary, base, critical in metrics:
            high, low = mann_whitney_classify(canary[alive, :minute], base[alive, :minute])
            failed = high | low
            failing += failed
            if critical:
                critical_fail |= failed
        score = 100.0 * (len(metrics) - failing) / len(metrics)
        fail_t[alive[critical_fail | (score < KAYENTA_FAIL_SCORE)]] = 60.0 * minute
    return fail_t


PEERS = {
    "oracle_sprt": oracle_sprt,
    "kayenta_style": lambda d, sc: kayenta_style(d),
    "threshold_argo_flagger": lambda d, sc: threshold_rule(d),
    "naive_z": lambda d, sc: naive_z(d),
}
