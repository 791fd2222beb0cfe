"""The methods guardrail is compared against, vectorised over runs.

Two yardsticks (the oracle SPRT and the naive peeked z-test) and three peers, Kayenta, Argo
Rollouts and Flagger, each modelled on its upstream source: every parameter of a peer carries the
file and commit, or the documentation page, it comes from. A peer is a :class:`Machine`: its own
schedule of judgments, its own traffic steps and its own promotion and rollback rules, vectorised
over runs. The judge benchmark drives it over the fixed arrays of :mod:`bench.sim` (the canary share
stays at 10% there); the service benchmark drives it over traffic drawn window by window at the
canary share of the peer's own steps (:func:`drive`).

Every method returns, per run, the data time in seconds after deploy start at which it rolls back
(``fail_s``) and at which it promotes (``pass_s``); ``nan`` when it did not within the horizon.

Upstream sources read for this file (commits of the snapshots read):
- spinnaker/kayenta @ a69573be9d8f: kayenta-judge/.../NetflixACAJudge.scala,
  classifiers/metric/MannWhitneyClassifier.scala, scorers/WeightedSumScorer.scala,
  classifiers/score/ThresholdScoreClassifier.scala, stats/EffectSizes.scala,
  kayenta-mannwhitney/.../MannWhitney.scala.
- spinnaker/orca @ 2fdb327a9f67: orca-kayenta/.../KayentaCanaryContext.kt,
  pipeline/RunCanaryIntervalsStage.kt, tasks/MonitorKayentaCanaryTask.kt,
  tasks/AggregateCanaryResultsTask.kt.
- Spinnaker docs (spinnaker/spinnaker.io, content/en/docs/guides/user/canary/): best-practices/_index.md
  @ 0ebfbaaed914 (https://spinnaker.io/docs/guides/user/canary/best-practices/), config/canary-config.md
  and stage/_index.md @ 040f49739c02.
- argoproj/argo-rollouts @ 9f8d111d8f8e: docs/features/analysis.md (the background `success-rate`
  example), analysis/analysis.go, utils/evaluate/evaluate.go, pkg/apis/rollouts/v1alpha1/analysis_types.go.
- fluxcd/flagger @ 15bd6ad555e6: docs/gitbook/tutorials/istio-progressive-delivery.md,
  pkg/metrics/observers/istio.go, pkg/controller/scheduler.go, pkg/controller/scheduler_metrics.go,
  pkg/metrics/providers/prometheus.go.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

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
# What a peer sees: per-window counts, shared by the judge and the service benchmarks.


@dataclass(slots=True)
class Tracks:
    """Per-window counts of ``runs`` deploys (rows): canary and baseline requests, errors and latency
    bucket counts, and the canary's share of traffic in each window. Window k covers data time
    [10 k, 10 k + 10) s after deploy start."""

    c_req: np.ndarray  # (runs, windows)
    c_err: np.ndarray
    c_lat: np.ndarray  # (runs, windows, buckets)
    b_req: np.ndarray
    b_err: np.ndarray
    b_lat: np.ndarray
    share: np.ndarray  # (runs, windows): the canary share the rollout assigned

    @classmethod
    def of(cls, d: SimData) -> Tracks:
        """The judge benchmark's arrays: the canary share is fixed at 10%."""
        return cls(
            d.canary_req,
            d.canary_err,
            d.canary_lat,
            d.base_req,
            d.base_err,
            d.base_lat,
            np.full(d.canary_req.shape, WEIGHT),
        )

    @classmethod
    def empty(cls, runs: int, windows: int, buckets: int) -> Tracks:
        z = np.zeros((runs, windows), dtype=np.int64)
        zl = np.zeros((runs, windows, buckets), dtype=np.int64)
        return cls(z, z.copy(), zl, z.copy(), z.copy(), zl.copy(), np.zeros((runs, windows)))

    @property
    def runs(self) -> int:
        return self.c_req.shape[0]


def _req_err(tr: Tracks, rows: np.ndarray, k0: int, k1: int, scope: str) -> tuple[np.ndarray, np.ndarray]:
    k0 = max(k0, 0)
    req = tr.c_req[rows, k0:k1].sum(axis=1)
    err = tr.c_err[rows, k0:k1].sum(axis=1)
    if scope == "service":
        req = req + tr.b_req[rows, k0:k1].sum(axis=1)
        err = err + tr.b_err[rows, k0:k1].sum(axis=1)
    return req, err


def success_rate(tr: Tracks, rows: np.ndarray, k0: int, k1: int, scope: str) -> np.ndarray:
    """Requests without error / all requests over windows [k0, k1) (the ratio the PromQL queries
    compute: non-5xx over all), for the canary (``scope="canary"``) or the whole service
    (``"service"``: canary + baseline, as a query on the service name sees it); ``nan`` without
    requests (PromQL's 0/0)."""
    req, err = _req_err(tr, rows, k0, k1, scope)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(req > 0, (req - err) / np.maximum(req, 1), np.nan)


def error_rate(tr: Tracks, rows: np.ndarray, k0: int, k1: int, scope: str) -> np.ndarray:
    """Errors / requests over windows [k0, k1); ``nan`` without requests."""
    req, err = _req_err(tr, rows, k0, k1, scope)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(req > 0, err / np.maximum(req, 1), np.nan)


def canary_p99_ms(tr: Tracks, rows: np.ndarray, k0: int, k1: int) -> np.ndarray:
    """Canary p99 (ms) over windows [k0, k1) by ``histogram_quantile`` on the summed buckets."""
    return histogram_quantile(0.99, tr.c_lat[rows, max(k0, 0) : k1].sum(axis=1))


# --------------------------------------------------------------------------------------------
# Peers as machines: a schedule of events, a canary share, and the decision taken at each event.


class Machine:
    """A peer's controller for ``runs`` deploys at once. ``fail_s`` / ``pass_s``: data time of the
    rollback / the promotion to 100% (``nan``: not yet)."""

    label = ""

    def __init__(self, runs: int) -> None:
        self.fail_s = np.full(runs, np.nan)
        self.pass_s = np.full(runs, np.nan)

    @property
    def alive(self) -> np.ndarray:
        return np.isnan(self.fail_s) & np.isnan(self.pass_s)

    def share(self) -> np.ndarray:
        """Canary share of traffic (0-1) per run until the next event."""
        raise NotImplementedError

    def next_event(self, k: int) -> int | None:
        """Number of windows observed at the next event after ``k`` windows (> k); None: no more events."""
        raise NotImplementedError

    def decide(self, tr: Tracks, k: int) -> None:
        """Act at the event after ``k`` windows (data time 10 k s), on the runs still alive."""
        raise NotImplementedError


Fill = Callable[[Tracks, int, int, np.ndarray, np.ndarray], None]


def drive(m: Machine, tr: Tracks, max_windows: int, fill: Fill | None = None) -> Machine:
    """Run ``m`` from deploy start to its last event or ``max_windows`` windows. ``fill(tr, k0, k1,
    share, alive)`` draws windows [k0, k1) of the live runs at their current canary share (the
    service benchmark); without it the windows already exist (the judge benchmark)."""
    k = 0
    while m.alive.any():
        nxt = m.next_event(k)
        if nxt is None or nxt > max_windows:
            break
        if fill is not None:
            fill(tr, k, nxt, m.share(), m.alive)
        k = nxt
        m.decide(tr, k)
    return m


def _windows(seconds: float) -> int:
    w = seconds / LOOK_S
    if abs(w - round(w)) > 1e-9:
        raise ValueError(f"{seconds} s is not a multiple of the {LOOK_S:g}-s window")
    return round(w)


# --------------------------------------------------------------------------------------------
# Kayenta: NetflixACAJudge + MannWhitneyClassifier inside orca's canary stage.

KAYENTA_METRICS = ("error_rate", "latency_p95", "latency_p99", "throughput")
# MannWhitneyClassifier(tolerance = 0.25, confLevel = 0.98): NetflixACAJudge.scala classifyMetric
KAYENTA_CONFIDENCE = 0.98
KAYENTA_TOLERANCE = 0.25
# allowedIncrease / allowedDecrease default 1.0 for the meanRatio effect size (NetflixACAJudge.scala)
KAYENTA_ALLOWED_RATIO = 1.0
# WeightedSumScorer.scala: NODATA_THRESHOLD = 50 (% of metrics without data fails the canary)
KAYENTA_NODATA_PCT = 50.0
PASS, HIGH, LOW, NODATA = 0, 1, 2, 3  # metric classification labels


def _tie_term(x: np.ndarray) -> np.ndarray:
    """sum(t^3 - t) over groups of tied values in each row."""
    rows, m = x.shape
    s = np.sort(x, axis=1)
    new_group = np.ones_like(s, dtype=bool)
    new_group[:, 1:] = s[:, 1:] != s[:, :-1]
    gid = np.cumsum(new_group, axis=1) - 1 + (np.arange(rows) * m)[:, None]
    t = np.bincount(gid.ravel(), minlength=rows * m).astype(float)
    return (t**3 - t).reshape(rows, m).sum(axis=1)


def _b_below(c: np.ndarray, b: np.ndarray, inclusive: bool) -> np.ndarray:
    """Per row: the sum over canary values c_i of #{b_j < c_i} (``<=`` when ``inclusive``)."""
    n, m = c.shape[1], b.shape[1]
    z = np.concatenate((b, c) if inclusive else (c, b), axis=1)  # on ties the stable sort keeps this order
    is_b = np.zeros(z.shape, dtype=bool)
    if inclusive:
        is_b[:, :m] = True
    else:
        is_b[:, n:] = True
    order = np.argsort(z, axis=1, kind="stable")
    sb = np.take_along_axis(is_b, order, axis=1)
    return np.where(sb, 0, np.cumsum(sb, axis=1)).sum(axis=1)


def _mw_rows(canary: np.ndarray, base: np.ndarray, direction: str) -> np.ndarray:
    """MannWhitneyClassifier.compare on rows without NaN and with data on both sides: labels."""
    rows, n = canary.shape
    m = base.shape[1]
    nm = n * m
    labels = np.full(rows, PASS)
    ties = _tie_term(canary) + _tie_term(base)
    sigma = np.sqrt(nm / 12.0 * ((n + m + 1) - ties / ((n + m) * (n + m - 1))))
    z = ndtri(1.0 - (1.0 - KAYENTA_CONFIDENCE) / 2.0)
    # MannWhitney.scala inverts the normal approximation of the rank-sum statistic (continuity
    # correction 1/2): the interval's ends are order statistics of the pairwise differences.
    j_lo = np.clip(np.floor(nm / 2.0 - 0.5 - z * sigma).astype(int), 0, nm - 1)
    j_hi = np.clip(np.floor(nm / 2.0 + 0.5 + z * sigma).astype(int), 0, nm - 1)
    # Fast path: an interval that holds 0 is a Pass whatever the estimate (High needs lower > 0.25 |est|
    # >= 0, Low needs upper < -0.25 |est| <= 0). #{d <= 0} and #{d >= 0} come from one merge per row.
    n_le0 = nm - _b_below(canary, base, inclusive=False)  # #{c_i - b_j <= 0}
    n_ge0 = _b_below(canary, base, inclusive=True)  # #{c_i - b_j >= 0}
    lower_pos = n_le0 <= j_lo  # the j_lo-th smallest difference is > 0
    upper_neg = n_ge0 <= nm - 1 - j_hi  # the j_hi-th smallest difference is < 0
    want_high = direction in ("increase", "either")
    want_low = direction in ("decrease", "either")
    need = np.flatnonzero((lower_pos & want_high) | (upper_neg & want_low))
    if need.size == 0:
        return labels
    c, b = canary[need], base[need]
    diffs = np.sort((c[:, :, None] - b[:, None, :]).reshape(need.size, nm), axis=1)
    # Hodges-Lehmann estimate (MannWhitney.scala solves for the root of the statistic at quantile 0;
    # the median of the pairwise differences is that root up to the continuity correction)
    estimate = np.abs(np.median(diffs, axis=1))
    lower = np.take_along_axis(diffs, j_lo[need, None], axis=1)[:, 0]
    upper = np.take_along_axis(diffs, j_hi[need, None], axis=1)[:, 0]
    mean_c, mean_b = c.mean(axis=1), b.mean(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        # EffectSizes.meanRatio: NaN when a mean is 0, and then the effect-size check is skipped
        ratio = np.where((mean_c != 0) & (mean_b != 0), mean_c / mean_b, np.nan)
    nan_ratio = np.isnan(ratio)
    high = want_high & (lower > KAYENTA_TOLERANCE * estimate) & (nan_ratio | (ratio >= KAYENTA_ALLOWED_RATIO))
    low = want_low & (upper < -KAYENTA_TOLERANCE * estimate) & (nan_ratio | (ratio <= KAYENTA_ALLOWED_RATIO))
    labels[need[high]] = HIGH
    labels[need[low & ~high]] = LOW
    return labels


def mann_whitney_classify(canary: np.ndarray, base: np.ndarray, direction: str = "either") -> np.ndarray:
    """Kayenta's MannWhitneyClassifier.classify per row of points: PASS, HIGH, LOW or NODATA.

    - NaN points are removed, track by track: NetflixACAJudge reads ``nanStrategy`` with the default
      "none", which NaNStrategy.parse (BaseMetricClassifier.scala) maps to Remove. A track left empty
      is NODATA.
    - Identical sorted data, or a single distinct value over both tracks, is a Pass.
    - Otherwise the Mann-Whitney 98% interval of the canary - baseline shift (Hodges-Lehmann) against
      bounds of +-0.25 x |estimate|: HIGH when the interval's lower end is above 0.25 |estimate| and
      the mean ratio canary/baseline is >= 1, LOW symmetrically; ``direction`` ("increase",
      "decrease", "either") keeps only the allowed side.
    Simplifications: the tie correction counts ties within each track (Kayenta recomputes it on the
    shifted pooled sample at each trial shift); no Gaussian noise for two constant tracks (their
    zero variance gives the same verdict); outlier removal is off, as by default.
    """
    rows = canary.shape[0]
    labels = np.full(rows, PASS)
    bad = np.isnan(canary).any(axis=1) | np.isnan(base).any(axis=1)
    clean = np.flatnonzero(~bad)
    if clean.size:
        c, b = canary[clean], base[clean]
        identical = (
            (np.sort(c, axis=1) == np.sort(b, axis=1)).all(axis=1)
            if c.shape[1] == b.shape[1]
            else np.zeros(clean.size, dtype=bool)
        )
        lo = np.minimum(c.min(axis=1), b.min(axis=1))
        hi = np.maximum(c.max(axis=1), b.max(axis=1))
        test = np.flatnonzero(~identical & (lo != hi))
        if test.size:
            labels[clean[test]] = _mw_rows(c[test], b[test], direction)
    for r in np.flatnonzero(bad):  # rare: only a canary that serves nothing has NaN points
        c, b = canary[r][~np.isnan(canary[r])], base[r][~np.isnan(base[r])]
        if c.size == 0 or b.size == 0:
            labels[r] = NODATA
        else:
            labels[r] = mann_whitney_classify(c[None, :], b[None, :], direction)[0]
    return labels


def kayenta_score(labels: np.ndarray, critical: np.ndarray) -> np.ndarray:
    """WeightedSumScorer.score with every metric in one group, per row of metric labels (rows, metrics):
    0 when a critical metric is not Pass or when >= 50% of the metrics have no data; otherwise
    100 x Pass / (Pass + High + Low), rounded to 2 decimals (100 when none of them has data)."""
    labels = np.asarray(labels)
    critical = np.broadcast_to(np.asarray(critical, dtype=bool), labels.shape)
    n_metrics = labels.shape[1]
    passed = (labels == PASS).sum(axis=1)
    counted = (labels != NODATA).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        score = np.where(counted > 0, 100.0 * passed / np.maximum(counted, 1), 100.0)
    crit_fail = (critical & (labels != PASS)).any(axis=1)
    nodata = 100.0 * (labels == NODATA).sum(axis=1) / n_metrics >= KAYENTA_NODATA_PCT
    return np.round(np.where(crit_fail | nodata, 0.0, score), 2)


def kayenta_stage(
    score: np.ndarray, last: bool, pass_score: float, marginal_score: float
) -> tuple[np.ndarray, np.ndarray]:
    """orca's decision on one interval's scores: (fails, passes). MonitorKayentaCanaryTask ends the
    stage (TERMINAL) as soon as an interval scores <= marginal; after the last interval
    AggregateCanaryResultsTask also fails a final score below pass and otherwise succeeds."""
    fails = score <= marginal_score
    if not last:
        return fails, np.zeros_like(fails)
    fails = fails | (score < pass_score)
    return fails, ~fails


def kayenta_points(
    tr: Tracks, rows: np.ndarray, k0: int, k1: int, step: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per metric of KAYENTA_METRICS: (canary points, baseline points), one point per ``step`` windows
    over [k0, k1): error rate, p95 and p99 latency (``histogram_quantile``), and requests per unit of
    assigned traffic share (canary / share, baseline / (1 - share)). NaN where a track has no data."""
    npts = (k1 - k0) // step
    k1 = k0 + npts * step

    def pts(a: np.ndarray) -> np.ndarray:
        x = a[rows, k0:k1]
        return x.reshape(len(rows), npts, step, *x.shape[2:]).sum(axis=2)

    c_req, b_req, share = pts(tr.c_req), pts(tr.b_req), pts(tr.share) / step
    c_lat, b_lat = pts(tr.c_lat), pts(tr.b_lat)
    with np.errstate(invalid="ignore", divide="ignore"):
        return [
            (
                np.where(c_req > 0, pts(tr.c_err) / c_req, np.nan),
                np.where(b_req > 0, pts(tr.b_err) / b_req, np.nan),
            ),
            (histogram_quantile(0.95, c_lat), histogram_quantile(0.95, b_lat)),
            (histogram_quantile(0.99, c_lat), histogram_quantile(0.99, b_lat)),
            (c_req / share, b_req / (1.0 - share)),
        ]


@dataclass(frozen=True, slots=True)
class KayentaConfig:
    """One canary stage of Spinnaker (orca) judged by Kayenta's NetflixACAJudge."""

    name: str
    label: str
    family: str = "Kayenta"
    documented: bool = False
    # Real-time canary: lifetime, and interval between judgments (KayentaCanaryContext.kt;
    # RunCanaryIntervalsStage.kt: interval defaults to the lifetime, numIntervals = lifetime / interval).
    lifetime_s: float = 1800.0
    interval_s: float | None = None
    # CanaryConfigScope.step: seconds between the points of each metric's time series (default 60)
    step_s: float = 60.0
    # KayentaCanaryContext.scoreThresholds default: pass 75, marginal 50
    pass_score: float = 75.0
    marginal_score: float = 50.0
    # canary.direction per metric; NetflixACAJudge's default is "either"
    directions: tuple[str, ...] = ("either",) * 4
    # canary.critical per metric; NetflixACAJudge's default is false
    critical: tuple[bool, ...] = (False,) * 4
    # beginCanaryAnalysisAfterMins (warm-up wait) and lookbackMins (0: each judgment covers the whole
    # window from the start, "growing"); RunCanaryIntervalsStage.buildRequestScopes
    warmup_s: float = 0.0
    lookback_s: float = 0.0
    first_judgment_s: float = 0.0  # not Kayenta: lets the every-minute variant skip minutes 1 and 2
    weight: float = WEIGHT  # canary share during the stage; promotion to 100% when it succeeds

    def judgments(self) -> list[int]:
        """Windows observed at each judgment: warm-up + i x interval, i = 1 .. lifetime / interval."""
        interval = self.interval_s or self.lifetime_s
        n = int(self.lifetime_s // interval)
        times = [self.warmup_s + i * interval for i in range(1, n + 1)]
        return [_windows(t) for t in times if t >= self.first_judgment_s]

    def machine(self, runs: int) -> Machine:
        return KayentaMachine(self, runs)


class KayentaMachine(Machine):
    def __init__(self, cfg: KayentaConfig, runs: int) -> None:
        super().__init__(runs)
        self.cfg = cfg
        self.label = cfg.label
        self.ks = cfg.judgments()
        self.step = _windows(cfg.step_s)
        self.scores: dict[int, np.ndarray] = {}  # judgment window -> scores of the runs judged then

    def share(self) -> np.ndarray:
        return np.full(self.fail_s.size, self.cfg.weight)

    def next_event(self, k: int) -> int | None:
        return next((j for j in self.ks if j > k), None)

    def decide(self, tr: Tracks, k: int) -> None:
        if k not in self.ks:
            return
        cfg = self.cfg
        rows = np.flatnonzero(self.alive)
        k_end = k
        k_start = _windows(cfg.warmup_s)
        if cfg.lookback_s > 0:
            k_start = max(k_start, k_end - _windows(cfg.lookback_s))
        labels = np.stack(
            [
                mann_whitney_classify(c, b, direction)
                for (c, b), direction in zip(
                    kayenta_points(tr, rows, k_start, k_end, self.step), cfg.directions, strict=True
                )
            ],
            axis=1,
        )
        score = kayenta_score(labels, np.array(cfg.critical))
        self.scores[k] = score
        fails, passes = kayenta_stage(score, k == self.ks[-1], cfg.pass_score, cfg.marginal_score)
        t = k * LOOK_S
        self.fail_s[rows[fails]] = t
        self.pass_s[rows[passes]] = t


# --------------------------------------------------------------------------------------------
# Argo Rollouts: a canary Rollout with a background AnalysisRun.

ARGO_DOC_STEPS: tuple[tuple[str, float], ...] = (
    # docs/features/analysis.md, "Background Analysis": setWeight 20/40/60/80, each followed by a 10m pause
    ("setWeight", 20),
    ("pause", 600),
    ("setWeight", 40),
    ("pause", 600),
    ("setWeight", 60),
    ("pause", 600),
    ("setWeight", 80),
    ("pause", 600),
)


@dataclass(frozen=True, slots=True)
class ArgoConfig:
    """A Rollout's canary steps and one background analysis metric with a ``successCondition``."""

    name: str
    label: str
    family: str = "Argo Rollouts"
    documented: bool = False
    steps: tuple[tuple[str, float], ...] = ARGO_DOC_STEPS
    # analysis.startingStep: the analysis run starts when this step index is reached (the doc: 2,
    # "delay starting analysis run until setWeight: 40%")
    starting_step: int = 2
    # the query's scope: "service" = every pod behind the service (the doc's
    # destination_service=~"{{args.service-name}}"), "canary" = the canary's pods only
    scope: str = "service"
    success_min: float = 0.95  # successCondition: result[0] >= 0.95
    interval_s: float = 300.0  # interval: 5m
    # the query's window: the doc's irate(...[5m]) is the rate between the last two scrapes
    # (Prometheus docs, querying/functions.md: "based on the last two data points"); one 10-s window here
    range_s: float = 10.0
    failure_limit: int = 3  # failureLimit: 3

    def schedule(self) -> tuple[list[tuple[float, float]], float, float]:
        """(weight changes (data time, share), analysis start, time all steps are done)."""
        t, changes, start = 0.0, [], None
        for i, (kind, value) in enumerate(self.steps):
            if i == self.starting_step:
                start = t
            if kind == "setWeight":
                changes.append((t, value / 100.0))
            else:
                t += value
        return changes, (t if start is None else start), t

    def machine(self, runs: int) -> Machine:
        return ArgoMachine(self, runs)


def argo_failed_at(failed: np.ndarray, failure_limit: int) -> np.ndarray:
    """Index of the measurement at which the AnalysisRun fails, per row of measurement outcomes
    (True = Failed), -1 if none: analysis.go assessMetricFailureInconclusiveOrError fails the metric
    when ``result.Failed > failureLimit``; Failed is a running total, not a streak."""
    total = np.cumsum(failed, axis=1)
    hit = total > failure_limit
    return np.where(hit.any(axis=1), np.argmax(hit, axis=1), -1)


class ArgoMachine(Machine):
    def __init__(self, cfg: ArgoConfig, runs: int) -> None:
        super().__init__(runs)
        self.cfg = cfg
        self.label = cfg.label
        changes, start, done = cfg.schedule()
        self.changes = {_windows(t): w for t, w in changes}
        self.weight = changes[0][1] if changes and changes[0][0] == 0 else 0.0
        self.done = _windows(done)
        # analysis.go generateMetricTasks: the first measurement right away (no initialDelay), then one
        # when `interval` has passed since the last; the run is terminated when the rollout completes
        k_a, step = _windows(start), _windows(cfg.interval_s)
        self.measure = set(range(k_a, self.done, step))
        self.events = sorted({*self.measure, *(k for k in self.changes if k > 0), self.done})
        self.failed = np.zeros(runs, dtype=int)

    def share(self) -> np.ndarray:
        return np.full(self.fail_s.size, self.weight)

    def next_event(self, k: int) -> int | None:
        return next((j for j in self.events if j > k), None)

    def decide(self, tr: Tracks, k: int) -> None:
        t = k * LOOK_S
        if k >= self.done:  # all steps done: the rollout is promoted to 100%
            self.pass_s[self.alive] = t
            return
        if k in self.measure:
            rows = np.flatnonzero(self.alive)
            value = success_rate(tr, rows, k - _windows(self.cfg.range_s), k, self.cfg.scope)
            # evaluate.go EvaluateResult: with only a successCondition, a measurement fails when the
            # condition is false; NaN >= x is false (an empty result is an Error, counted apart and
            # aborting only after consecutiveErrorLimit; a 0/0 query returns NaN, not an empty vector)
            self.failed[rows] += ~(value >= self.cfg.success_min)
            self.fail_s[rows[self.failed[rows] > self.cfg.failure_limit]] = t
        if k in self.changes:
            self.weight = self.changes[k]


# --------------------------------------------------------------------------------------------
# Flagger: a Canary's analysis driven by the scheduler every `interval`.


@dataclass(frozen=True, slots=True)
class FlaggerConfig:
    """spec.analysis of a Flagger Canary with the two built-in Istio metrics."""

    name: str
    label: str
    family: str = "Flagger"
    documented: bool = False
    # istio-progressive-delivery.md: interval 1m, threshold 5, maxWeight 50, stepWeight 10
    interval_s: float = 60.0
    threshold: int = 5
    max_weight: int = 50
    step_weight: int = 10
    # request-success-rate: thresholdRange.min 99 (percent), interval 1m; canary workload only
    # (observers/istio.go: destination_workload=~"{{ target }}")
    success_min_pct: float = 99.0
    success_range_s: float = 60.0
    # request-duration: thresholdRange.max 500 (ms, P99), interval 30s
    p99_max_ms: float = 500.0
    duration_range_s: float = 30.0

    def machine(self, runs: int) -> Machine:
        return FlaggerMachine(self, runs)


def flagger_checks_ok(success_pct: np.ndarray, p99_ms: np.ndarray, cfg: FlaggerConfig) -> np.ndarray:
    """scheduler_metrics.go runBuiltinMetricChecks: a check fails when a query has no value
    (providers/prometheus.go turns NaN into ErrNoValuesFound), when the success rate < min, or when
    the p99, truncated to whole milliseconds (observers/istio.go GetRequestDuration), > max."""
    with np.errstate(invalid="ignore"):
        ok_sr = ~np.isnan(success_pct) & ~(success_pct < cfg.success_min_pct)
        ok_dur = ~np.isnan(p99_ms) & ~(np.floor(np.nan_to_num(p99_ms)) > cfg.p99_max_ms)
    return ok_sr & ok_dur


class FlaggerMachine(Machine):
    """scheduler.go advanceCanary, one call per interval. Tick 0 (deploy start) runs the pre-rollout
    hooks and sets the canary weight to stepWeight. At each later tick: if failedChecks >= threshold,
    roll back; otherwise run the analysis: a failed check adds 1 to failedChecks (a running total,
    never reset by a success); a passed check adds stepWeight to the weight (runCanary), or, once the
    weight is >= maxWeight, promotes (the canary spec is copied to the primary: the new version then
    gets all the traffic)."""

    def __init__(self, cfg: FlaggerConfig, runs: int) -> None:
        super().__init__(runs)
        self.cfg = cfg
        self.label = cfg.label
        self.tick = _windows(cfg.interval_s)
        self.weight = np.full(runs, cfg.step_weight, dtype=int)
        self.failed = np.zeros(runs, dtype=int)

    def share(self) -> np.ndarray:
        return self.weight / 100.0

    def next_event(self, k: int) -> int | None:
        return (k // self.tick + 1) * self.tick

    def step(self, rows: np.ndarray, ok: np.ndarray, t: float) -> None:
        """One tick for ``rows`` (alive) with their analysis outcomes ``ok``."""
        rollback = self.failed[rows] >= self.cfg.threshold
        self.fail_s[rows[rollback]] = t
        run, ok = rows[~rollback], ok[~rollback]
        self.failed[run[~ok]] += 1
        good = run[ok]
        top = self.weight[good] >= self.cfg.max_weight
        self.pass_s[good[top]] = t
        grow = good[~top]
        self.weight[grow] = np.minimum(self.weight[grow] + self.cfg.step_weight, 100)

    def decide(self, tr: Tracks, k: int) -> None:
        rows = np.flatnonzero(self.alive)
        cfg = self.cfg
        req, err = _req_err(tr, rows, k - _windows(cfg.success_range_s), k, "canary")
        with np.errstate(invalid="ignore", divide="ignore"):  # istio.go: non-5xx / all * 100
            sr = np.where(req > 0, (req - err) / np.maximum(req, 1) * 100.0, np.nan)
        p99 = canary_p99_ms(tr, rows, k - _windows(cfg.duration_range_s), k)
        self.step(rows, flagger_checks_ok(sr, p99, cfg), k * LOOK_S)


# --------------------------------------------------------------------------------------------
# A fixed-threshold rule checked every 10 s (neither Argo's nor Flagger's counting).


@dataclass(frozen=True, slots=True)
class ThresholdConfig:
    name: str
    label: str
    family: str = "Threshold rule"
    documented: bool = False
    error_rate_max: float = 0.01
    p99_max_ms: float = 400.0
    range_s: float = 60.0  # the PromQL range: last 60 s
    in_a_row: int = 3  # consecutive failing checks

    def machine(self, runs: int) -> Machine:
        return ThresholdMachine(self, runs)


class ThresholdMachine(Machine):
    """Canary error rate over the last 60 s > 1% or canary p99 over the last 60 s > 400 ms, at every
    10-s check; rolls back after 3 consecutive failing checks; never promotes by itself."""

    def __init__(self, cfg: ThresholdConfig, runs: int) -> None:
        super().__init__(runs)
        self.cfg = cfg
        self.label = cfg.label
        self.streak = np.zeros(runs, dtype=int)

    def share(self) -> np.ndarray:
        return np.full(self.fail_s.size, WEIGHT)

    def next_event(self, k: int) -> int | None:
        return k + 1

    def decide(self, tr: Tracks, k: int) -> None:
        rows = np.flatnonzero(self.alive)
        k0 = k - _windows(self.cfg.range_s)
        err_rate = error_rate(tr, rows, k0, k, "canary")
        p99 = canary_p99_ms(tr, rows, k0, k)
        bad = (np.nan_to_num(err_rate) > self.cfg.error_rate_max) | (np.nan_to_num(p99) > self.cfg.p99_max_ms)
        self.streak[rows] = np.where(bad, self.streak[rows] + 1, 0)
        self.fail_s[rows[self.streak[rows] >= self.cfg.in_a_row]] = k * LOOK_S


# --------------------------------------------------------------------------------------------
# The configurations: documented ones first, then common variants (the trade-off picture).

PeerConfig = KayentaConfig | ArgoConfig | FlaggerConfig | ThresholdConfig

_KAYENTA_DOC = {
    # best-practices/_index.md "Run the canary for enough time": >= 50 points per metric per canary run;
    # start with a 3-hour lifetime and a 1-hour interval, no warm-up: 3 canary runs. Our deploys last
    # 30 minutes, so the same shape is 3 judgments of a growing window, 10 minutes apart, with the
    # 10-s resolution of the data as the step: 60 points per metric by the first judgment.
    "lifetime_s": 1800.0,
    "interval_s": 600.0,
    "step_s": 10.0,
    # "Carefully choose your thresholds": marginal 75, pass 95 as good starting points
    "marginal_score": 75.0,
    "pass_score": 95.0,
    # config/canary-config.md: each metric fails when it deviates too high, too low or either way;
    # errors and latency fail high, throughput fails low
    "directions": ("increase", "increase", "increase", "decrease"),
}

KAYENTA = KayentaConfig(
    "kayenta",
    "Kayenta as documented (3 × 10-min growing judgments, 10-s points, marginal 75 / pass 95)",
    documented=True,
    **_KAYENTA_DOC,
)
KAYENTA_EVERY_MINUTE = KayentaConfig(
    "kayenta_every_minute",
    "Kayenta-style, judged every minute (60-s points, from minute 3, score < 75 or error rate fails)",
    interval_s=60.0,
    step_s=60.0,
    first_judgment_s=180.0,
    critical=(True, False, False, False),
)
ARGO = ArgoConfig(
    "argo",
    "Argo Rollouts as documented (service success rate >= 95% every 5 min, failureLimit 3)",
    documented=True,
)
FLAGGER = FlaggerConfig(
    "flagger",
    "Flagger as documented (Istio tutorial: 1-min checks, threshold 5, 10% steps to 50%)",
    documented=True,
)
THRESHOLD_EVERY_10S = ThresholdConfig(
    "threshold_every_10s", "Threshold rule checked every 10 s (errors > 1% or p99 > 400 ms, 3 in a row)"
)

VARIANTS: tuple[PeerConfig, ...] = (
    KayentaConfig(
        "kayenta_5min", "Kayenta, 6 × 5-min judgments, 75/95", **{**_KAYENTA_DOC, "interval_s": 300.0}
    ),
    KayentaConfig(
        "kayenta_defaults_thresholds",
        "Kayenta, 3 × 10-min judgments, orca's default 50/75",
        **{**_KAYENTA_DOC, "marginal_score": 50.0, "pass_score": 75.0},
    ),
    KayentaConfig(
        "kayenta_one_judgment",
        "Kayenta, one 30-min judgment (orca's default interval), 75/95",
        **{**_KAYENTA_DOC, "interval_s": None},
    ),
    KayentaConfig(
        "kayenta_60s_points",
        "Kayenta, 3 × 10-min judgments of 60-s points (orca's default step), 75/95",
        **{**_KAYENTA_DOC, "step_s": 60.0},
    ),
    ArgoConfig(
        "argo_canary_fl3",
        "Argo, canary success >= 99% over 1 min, every 1 min, failureLimit 3",
        starting_step=0,
        scope="canary",
        success_min=0.99,
        interval_s=60.0,
        range_s=60.0,
        failure_limit=3,
    ),
    ArgoConfig(
        "argo_canary_fl1",
        "Argo, canary success >= 99% over 1 min, every 1 min, failureLimit 1",
        starting_step=0,
        scope="canary",
        success_min=0.99,
        interval_s=60.0,
        range_s=60.0,
        failure_limit=1,
    ),
    ArgoConfig(
        "argo_canary_fl0",
        "Argo, canary success >= 99% over 1 min, every 1 min, failureLimit 0 (default)",
        starting_step=0,
        scope="canary",
        success_min=0.99,
        interval_s=60.0,
        range_s=60.0,
        failure_limit=0,
    ),
    ArgoConfig(
        "argo_canary_5min",
        "Argo, canary success >= 99% over 5 min, every 5 min, failureLimit 0",
        starting_step=0,
        scope="canary",
        success_min=0.99,
        interval_s=300.0,
        range_s=300.0,
        failure_limit=0,
    ),
    FlaggerConfig("flagger_threshold1", "Flagger, threshold 1", threshold=1),
    FlaggerConfig("flagger_threshold2", "Flagger, threshold 2", threshold=2),
    FlaggerConfig("flagger_threshold10", "Flagger, threshold 10", threshold=10),
    FlaggerConfig("flagger_step5", "Flagger, stepWeight 5 (10 passing checks to promote)", step_weight=5),
    FlaggerConfig("flagger_30s", "Flagger, 30-s interval (success rate over 1 min)", interval_s=30.0),
)

TABLE_PEERS: tuple[PeerConfig, ...] = (KAYENTA, KAYENTA_EVERY_MINUTE, ARGO, FLAGGER, THRESHOLD_EVERY_10S)
ALL_PEERS: dict[str, PeerConfig] = {c.name: c for c in (*TABLE_PEERS, *VARIANTS)}
SERVICE_PEERS: tuple[PeerConfig, ...] = (KAYENTA, KAYENTA_EVERY_MINUTE, ARGO, FLAGGER)


def run_peer(cfg: PeerConfig, d: SimData) -> tuple[np.ndarray, np.ndarray]:
    """A peer on the judge benchmark's arrays: (fail_s, pass_s) per run within the 30 minutes."""
    m = drive(cfg.machine(d.runs), Tracks.of(d), N_LOOKS)
    return m.fail_s, m.pass_s


METHOD_FUNCS: dict[str, Callable[[SimData, Scenario], tuple[np.ndarray, np.ndarray]]] = {
    "oracle_sprt": lambda d, sc: (oracle_sprt(d, sc), np.full(d.runs, np.nan)),
    **{c.name: (lambda d, sc, c=c: run_peer(c, d)) for c in TABLE_PEERS},
    "naive_z": lambda d, sc: (naive_z(d), np.full(d.runs, np.nan)),
}
"""The methods of the judge table besides guardrail, in table order."""
