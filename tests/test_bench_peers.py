"""The benchmark's peers (bench/peers.py) decide as their upstream sources do, on small hand-made inputs.

Sources (the snapshots read; each test names the file it checks against):
- spinnaker/kayenta @ a69573be9d8f (kayenta-judge: WeightedSumScorer.scala, MannWhitneyClassifier.scala,
  NetflixACAJudge.scala; kayenta-mannwhitney: MannWhitney.scala)
- spinnaker/orca @ 2fdb327a9f67 (orca-kayenta: RunCanaryIntervalsStage.kt, MonitorKayentaCanaryTask.kt,
  AggregateCanaryResultsTask.kt, KayentaCanaryContext.kt)
- argoproj/argo-rollouts @ 9f8d111d8f8e (analysis/analysis.go, utils/evaluate/evaluate.go,
  docs/features/analysis.md)
- fluxcd/flagger @ 15bd6ad555e6 (pkg/controller/scheduler.go, scheduler_metrics.go,
  pkg/metrics/observers/istio.go, docs/gitbook/tutorials/istio-progressive-delivery.md)
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import ndtri

from bench.peers import (
    ARGO,
    FLAGGER,
    HIGH,
    KAYENTA,
    LOW,
    NODATA,
    PASS,
    ArgoConfig,
    FlaggerMachine,
    KayentaConfig,
    Tracks,
    argo_failed_at,
    drive,
    flagger_checks_ok,
    kayenta_score,
    kayenta_stage,
    mann_whitney_classify,
)
from bench.sim import N_BUCKETS, WEIGHT

# --------------------------------------------------------------------------------------------
# Kayenta


def test_kayenta_score_is_the_weighted_sum_scorer_of_one_group():
    """WeightedSumScorer.scala: score = Pass / (Pass + High + Low) x 100 within a group; a critical
    metric that is not Pass scores 0; >= 50% of the metrics NODATA scores 0; NODATA is left out."""
    labels = np.array(
        [
            [PASS, HIGH, PASS, PASS],  # one of four fails
            [PASS, HIGH, PASS, PASS],  # ... and it is critical
            [NODATA, PASS, PASS, HIGH],  # 25% no data: 2 of 3 counted pass
            [NODATA, NODATA, PASS, PASS],  # 50% no data
            [PASS, PASS, LOW, HIGH],
        ]
    )
    critical = np.array(
        [[False] * 4, [False, True, False, False], [False] * 4, [False] * 4, [False] * 4], dtype=bool
    )
    assert kayenta_score(labels, critical).tolist() == [75.0, 0.0, 66.67, 0.0, 50.0]


def test_kayenta_stage_ends_at_a_marginal_score_and_needs_the_pass_score_at_the_end():
    """MonitorKayentaCanaryTask: an interval scoring <= marginal ends the stage (TERMINAL);
    AggregateCanaryResultsTask: the last interval's score must also reach pass."""
    scores = np.array([80.0, 75.0, 95.0, 94.99])
    fails, passes = kayenta_stage(scores, last=False, pass_score=95, marginal_score=75)
    assert fails.tolist() == [False, True, False, False] and not passes.any()
    fails, passes = kayenta_stage(scores, last=True, pass_score=95, marginal_score=75)
    assert fails.tolist() == [True, True, False, True] and passes.tolist() == [False, False, True, False]
    # orca's default thresholds (KayentaCanaryContext: pass 75, marginal 50): 75 at the end passes
    fails, passes = kayenta_stage(np.array([75.0, 50.0]), last=True, pass_score=75, marginal_score=50)
    assert fails.tolist() == [False, True] and passes.tolist() == [True, False]


def _brute_force_labels(c: np.ndarray, b: np.ndarray, direction: str) -> int:
    """MannWhitneyClassifier.compare by the definition: every pairwise difference sorted, the interval's
    ends picked from them (as bench/peers.py models MannWhitney.scala), no shortcut."""
    n, m = c.size, b.size
    d = np.sort((c[:, None] - b[None, :]).ravel())
    if np.array_equal(np.sort(c), np.sort(b)) or np.unique(np.concatenate((c, b))).size == 1:
        return PASS

    def ties(x: np.ndarray) -> float:
        _, t = np.unique(x, return_counts=True)
        return float((t**3 - t).sum())

    sigma = np.sqrt(n * m / 12.0 * ((n + m + 1) - (ties(c) + ties(b)) / ((n + m) * (n + m - 1))))
    z = ndtri(0.99)
    lo = d[int(np.clip(np.floor(n * m / 2 - 0.5 - z * sigma), 0, n * m - 1))]
    hi = d[int(np.clip(np.floor(n * m / 2 + 0.5 + z * sigma), 0, n * m - 1))]
    est = abs(np.median(d))
    ratio = c.mean() / b.mean() if c.mean() != 0 and b.mean() != 0 else np.nan
    if direction != "decrease" and lo > 0.25 * est and (np.isnan(ratio) or ratio >= 1):
        return HIGH
    if direction != "increase" and hi < -0.25 * est and (np.isnan(ratio) or ratio <= 1):
        return LOW
    return PASS


def test_mann_whitney_classification_matches_the_pairwise_definition_with_ties_and_directions():
    rng = np.random.default_rng(11)
    rows = 400
    canary = rng.poisson(3.0, size=(rows, 12)).astype(float)  # many ties, as error counts have
    base = rng.poisson(3.0, size=(rows, 14)).astype(float)
    canary[: rows // 3] += 2.0  # a third shifted up, a third down
    canary[rows // 3 : 2 * rows // 3] = np.maximum(canary[rows // 3 : 2 * rows // 3] - 2.0, 0)
    for direction in ("either", "increase", "decrease"):
        got = mann_whitney_classify(canary, base, direction)
        want = [_brute_force_labels(canary[i], base[i], direction) for i in range(rows)]
        assert got.tolist() == want
        assert {HIGH, PASS} <= set(got.tolist()) if direction == "increase" else True
    assert (mann_whitney_classify(canary, base, "increase") != LOW).all()


def test_mann_whitney_small_cases():
    base = np.array([[1.0, 2, 3, 4, 5, 6, 7, 8]])
    assert mann_whitney_classify(base + 10, base)[0] == HIGH
    assert mann_whitney_classify(base + 10, base, "decrease")[0] == PASS
    assert mann_whitney_classify(base - 10, base, "decrease")[0] == LOW
    assert mann_whitney_classify(base[:, ::-1].copy(), base)[0] == PASS  # identical data
    # a canary mean of 0 makes the mean ratio NaN, and then the effect-size check is skipped
    # (MannWhitneyClassifier.compare: "If the effect size cannot be computed ... ignored")
    assert mann_whitney_classify(np.zeros((1, 8)), base)[0] == LOW
    # NaN points are removed (nanStrategy default "none" parses to Remove): a track left empty is NODATA
    empty = np.full((1, 8), np.nan)
    assert mann_whitney_classify(empty, base)[0] == NODATA
    half = base + 10
    half[0, :4] = np.nan
    assert mann_whitney_classify(half, base)[0] == HIGH


def _tracks(windows: int, c_err: int = 1, b_err: int = 9, c_req: int = 200, b_req: int = 1800) -> Tracks:
    """Hand-made constant traffic: every 10-s window has the same counts; latency all in one bucket."""
    tr = Tracks.empty(1, windows, N_BUCKETS)
    tr.c_req[:] = c_req
    tr.b_req[:] = b_req
    tr.c_err[:] = c_err
    tr.b_err[:] = b_err
    tr.c_lat[:, :, 5] = c_req
    tr.b_lat[:, :, 5] = b_req
    tr.share[:] = WEIGHT
    return tr


def test_kayenta_documented_judges_three_growing_windows_and_ends_early_on_one_failing_metric():
    """RunCanaryIntervalsStage: lifetime / interval judgments, each from the start (no lookback);
    with marginal 75 a single High metric of four (score 75) ends the stage at that judgment."""
    assert KAYENTA.judgments() == [60, 120, 180]  # 10, 20, 30 minutes of 10-s windows
    healthy = drive(KAYENTA.machine(1), _tracks(180), 180)
    assert np.isnan(healthy.fail_s[0]) and healthy.pass_s[0] == 1800  # identical tracks: promoted at the end
    bad = _tracks(180)
    bad.c_err[0, ::2] = 4  # canary error rate 1% / 2% alternating vs the baseline's 0.5%
    bad.c_err[0, 1::2] = 2
    m = drive(KAYENTA.machine(1), bad, 180)
    assert m.fail_s[0] == 600 and np.isnan(m.pass_s[0]) and m.scores[60].tolist() == [75.0]
    # orca's default thresholds (50 / 75): the same single failing metric scores 75 and passes
    lenient = KayentaConfig(
        "k", "k", lifetime_s=1800, interval_s=600, step_s=10, directions=KAYENTA.directions
    )
    m = drive(lenient.machine(1), bad, 180)
    assert np.isnan(m.fail_s[0]) and m.pass_s[0] == 1800


# --------------------------------------------------------------------------------------------
# Argo Rollouts


def test_argo_failure_limit_counts_failures_in_total_not_in_a_row():
    """analysis.go assessMetricFailureInconclusiveOrError: Failed > failureLimit fails the run; the
    Failed counter is a total (runMeasurements never resets it on a success)."""
    F, P = True, False
    outcomes = np.array(
        [
            [F, P, F, P, F, P, F, P],  # 4th failure at index 6
            [F, F, F, P, P, P, P, P],  # 3 failures: not > 3
            [P, P, P, F, F, F, F, P],  # 4 in a row: index 6
        ]
    )
    assert argo_failed_at(outcomes, 3).tolist() == [6, -1, 6]
    assert argo_failed_at(outcomes, 0).tolist() == [0, 0, 3]  # failureLimit 0 (the default): first failure


def test_argo_documented_rollout_measures_the_whole_service_every_5_min_from_the_40_percent_step():
    """docs/features/analysis.md: steps 20/40/60/80 with 10-min pauses, analysis from step 2 (40%),
    success-rate >= 0.95 every 5 min, failureLimit 3. The first measurement is taken when the run
    starts (analysis.go generateMetricTasks); the rollout completes, and promotes, at 40 minutes."""
    changes, start, done = ARGO.schedule()
    assert (
        changes == [(0.0, 0.2), (600.0, 0.4), (1200.0, 0.6), (1800.0, 0.8)] and start == 600 and done == 2400
    )
    m = ARGO.machine(1)
    assert sorted(m.measure) == [60, 90, 120, 150, 180, 210]
    # a canary failing 40% of its requests leaves a whole-service success rate above 95% at a 10% share...
    tr = _tracks(270, c_err=80)
    assert np.isnan(drive(ARGO.machine(1), tr, 270).fail_s[0])
    # ...it takes more than 5% of all requests failing, at 4 measurements: 600, 900, 1200, 1500 s
    tr = _tracks(270, b_err=200)
    m = drive(ARGO.machine(1), tr, 270)
    assert m.fail_s[0] == 1500 and np.isnan(m.pass_s[0])
    # only 3 bad measurements (600, 900, 1200 s): failed 3 is not > 3, so the rollout completes
    tr = _tracks(270, b_err=0)
    tr.b_err[0, [59, 89, 119]] = 200
    m = drive(ARGO.machine(1), tr, 270)
    assert np.isnan(m.fail_s[0]) and m.pass_s[0] == 2400


def test_argo_a_zero_over_zero_measurement_fails():
    """evaluate.go EvaluateResult: with only a successCondition a measurement fails when it is false,
    and NaN >= 0.99 is false."""
    cfg = ArgoConfig(
        "a",
        "a",
        starting_step=0,
        scope="canary",
        success_min=0.99,
        interval_s=60,
        range_s=60,
        failure_limit=0,
    )
    tr = _tracks(30, c_err=0)
    tr.c_req[0, 6:12] = 0
    tr.c_err[0, 6:12] = 0
    m = drive(cfg.machine(1), tr, 30)
    assert m.fail_s[0] == 120  # the measurement of the second minute saw no canary request


# --------------------------------------------------------------------------------------------
# Flagger


def test_flagger_promotes_after_max_weight_over_step_weight_passing_checks():
    """scheduler.go: tick 0 sets the weight to stepWeight; each passing check adds stepWeight; the check
    that passes at weight >= maxWeight promotes. The tutorial's 50 / 10: 5 passing checks."""
    m = FlaggerMachine(FLAGGER, 1)
    rows = np.array([0])
    weights = []
    for tick in range(1, 6):
        weights.append(int(m.weight[0]))
        m.step(rows, np.array([True]), tick * 60.0)
    assert weights == [10, 20, 30, 40, 50] and m.pass_s[0] == 300 and np.isnan(m.fail_s[0])


def test_flagger_counts_failed_checks_in_total_and_rolls_back_at_the_next_tick():
    """scheduler.go advanceCanary: FailedChecks + 1 per failed check, never reset; the check
    `FailedChecks >= threshold` comes first at the next tick and rolls back."""
    F, P = False, True
    sequences = [
        [F, F, F, F, F, P],  # 5th failure at tick 5, rollback at tick 6
        [F, P, F, P, F, P, F, P, F, P],  # 5th failure at tick 9 (weight 50 not yet passed), rollback at 10
        [F, P, F, P, F, P, F, P, P],  # 4 failures, then the 5th pass at weight 50 promotes at tick 9
    ]
    m = FlaggerMachine(FLAGGER, len(sequences))
    for tick in range(1, 11):
        rows = np.flatnonzero(m.alive)
        ok = np.array([sequences[r][tick - 1] if tick - 1 < len(sequences[r]) else P for r in rows])
        m.step(rows, ok, tick * 60.0)
    assert m.fail_s[0] == 360 and m.fail_s[1] == 600 and np.isnan(m.fail_s[2])
    assert m.pass_s[2] == 540 and m.failed.tolist() == [5, 5, 4]


def test_flagger_check_thresholds_and_no_data():
    """scheduler_metrics.go: success rate < min fails; duration > max fails, the p99 truncated to whole
    ms (istio.go GetRequestDuration); no value (NaN: providers ErrNoValuesFound) fails."""
    sr = np.array([99.0, 98.99, 100.0, 100.0, np.nan, 100.0])
    p99 = np.array([100.0, 100.0, 500.9, 501.0, 100.0, np.nan])
    assert flagger_checks_ok(sr, p99, FLAGGER).tolist() == [True, False, True, False, False, False]


def test_drive_moves_the_canary_share_with_the_peers_steps():
    """The service benchmark draws each window at the share the peer has in effect (Flagger: +10% per
    passing minute): the fill callback sees 10% for minute 1, 20% for minute 2, ... 50% for minute 5."""
    seen = []

    def fill(tr: Tracks, k0: int, k1: int, share: np.ndarray, alive: np.ndarray) -> None:
        seen.append((k0, k1, float(share[0])))
        healthy = _tracks(k1)
        for name in ("c_req", "c_err", "c_lat", "b_req", "b_err", "b_lat"):
            getattr(tr, name)[:, k0:k1] = getattr(healthy, name)[:, k0:k1]
        tr.share[:, k0:k1] = share[:, None]

    m = drive(FLAGGER.machine(1), Tracks.empty(1, 270, N_BUCKETS), 270, fill)
    assert seen == [(0, 6, 0.1), (6, 12, 0.2), (12, 18, 0.3), (18, 24, 0.4), (24, 30, 0.5)]
    assert m.pass_s[0] == 300


@pytest.mark.parametrize("cfg", [KAYENTA, ARGO, FLAGGER])
def test_documented_peers_are_marked_and_labelled(cfg):
    assert cfg.documented and "documented" in cfg.label


# --------------------------------------------------------------------------------------------
# The trade-off picture's inputs


def test_wilson_lower_end_is_zero_for_no_events_and_never_above_the_rate():
    from bench.judge_bench import wilson_hi, wilson_lo

    assert wilson_lo(0, 2000) == 0.0
    for k, n in ((1, 2000), (7, 2000), (50, 100), (100, 100)):
        assert 0.0 <= wilson_lo(k, n) <= k / n <= wilson_hi(k, n)


def test_trade_off_picture_draws_points_without_events_and_without_a_median(tmp_path):
    tradeoff = pytest.importorskip("bench.tradeoff")  # matplotlib: the `bench` extra
    from bench.judge_bench import Outcome, tradeoff_point

    never = Outcome(np.full(2000, np.nan), np.full(2000, np.nan), 0.0)
    fast = Outcome(np.full(500, 60.0), np.full(500, np.nan), 0.0)
    some = Outcome(np.where(np.arange(2000) < 7, 100.0, np.nan), np.full(2000, np.nan), 0.0)
    points = [
        tradeoff_point("argo", "Argo", "Argo Rollouts", True, never, never),  # 0 false, never detects
        tradeoff_point("k", "K", "Kayenta", False, some, fast),
    ]
    assert points[0]["x2_ttd_median_s"] is None and points[0]["false_rollback_wilson_lo"] == 0.0
    assert points[1]["x2_ttd_median_s"] == 60.0 and points[1]["false_rollback_rate"] == 7 / 2000
    curve = [tradeoff_point("g", "g", "guardrail", True, some, fast, 0.01)]
    payload = {"seed": 1, "runs_null": 2000, "runs_reg": 500, "guardrail": curve, "peers": points}
    out = tradeoff.plot(payload, tmp_path / "t.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
