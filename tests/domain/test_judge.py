"""Judge behaviour: decisions, evidence, data handling."""

import math

import numpy as np
import pytest

from guardrail.domain.errors import ValidationError
from guardrail.domain.judge import AnalysisSpec, BaselineMode, Judge, MetricKind, MetricSpec
from guardrail.domain.model import Decision, Direction, Histogram, MetricStatus, Sample, Track
from tests.domain.traffic import T0, Traffic


def run(
    traffic: Traffic,
    seed: int,
    *,
    spec: AnalysisSpec | None = None,
    looks: int = 180,
    history: bool = True,
    mode: BaselineMode = BaselineMode.CONCURRENT,
):
    rng = np.random.default_rng(seed)
    j = Judge(spec or AnalysisSpec(), start=T0, mode=mode)
    j.set_weight(T0, traffic.weight)
    if history:
        j.add_many(traffic.history(rng))
    v = j.evaluate()
    for k in range(looks):
        c, b = traffic.window(rng, T0 + k * traffic.interval)
        j.add(c)
        if mode is BaselineMode.CONCURRENT:
            j.add(b)
        v = j.evaluate(c.end)
        if v.decision in (Decision.FAIL, Decision.PASS):
            break
    return j, v


def test_doubled_error_rate_fails_with_a_plain_sentence():
    _, v = run(Traffic(err_ratio=3.0), seed=1)
    assert v.decision is Decision.FAIL
    ev = next(e for e in v.evidence if e.metric == "error_rate")
    assert ev.status is MetricStatus.FAIL
    assert ev.e_value_fail >= 1 / AnalysisSpec().metric_alpha(AnalysisSpec().metrics[0])
    assert ev.ci_low > 1.0
    assert ev.detail.startswith("canary error rate ")
    assert "CS" in ev.detail and "canary requests: fail" in ev.detail
    assert v.decided_at is not None and v.decided_at > T0


def test_healthy_canary_passes_early_by_non_inferiority():
    _, v = run(Traffic(), seed=2)
    assert v.decision is Decision.PASS
    assert v.decided_at < T0 + 1800
    for e in v.evidence:
        assert e.status is MetricStatus.PASS
        assert e.ci_high is not None and e.ci_low is not None


def test_slow_tail_fails_the_p99_metric():
    _, v = run(Traffic(canary_sigma=0.674), seed=3)
    assert v.decision is Decision.FAIL
    p99 = next(e for e in v.evidence if e.metric == "latency_p99")
    assert p99.status is MetricStatus.FAIL
    assert "slower than 300 ms" in p99.detail


def test_canary_losing_traffic_fails_throughput():
    _, v = run(Traffic(canary_traffic_factor=0.5), seed=4)
    assert v.decision is Decision.FAIL
    thr = next(e for e in v.evidence if e.metric == "throughput")
    assert thr.status is MetricStatus.FAIL
    assert thr.estimate < 0.6


def test_small_regression_on_low_traffic_is_inconclusive_with_a_power_statement():
    spec = AnalysisSpec(max_duration_s=600)
    _, v = run(Traffic(rate=40, err_ratio=1.2), seed=5, spec=spec, looks=60)
    assert v.decision is Decision.INCONCLUSIVE
    assert v.power is not None and "more canary requests" in v.power


def test_no_latency_data_is_not_zero_and_holds_the_verdict():
    rng = np.random.default_rng(6)
    j = Judge(AnalysisSpec(max_duration_s=300), start=T0)
    j.set_weight(T0, 0.1)
    v = None
    for k in range(30):
        c, b = Traffic().window(rng, T0 + 10 * k)
        j.add(Sample(Track.CANARY, c.start, c.end, c.requests, c.errors))
        j.add(Sample(Track.BASELINE, b.start, b.end, b.requests, b.errors))
        v = j.evaluate(c.end)
        assert v.decision is not Decision.PASS
    assert v.decision is Decision.INCONCLUSIVE
    assert "no data at all for latency_p99" in v.power
    assert next(e for e in v.evidence if e.metric == "latency_p99").status is MetricStatus.NO_DATA


def test_optional_metric_without_data_does_not_block_pass():
    spec = AnalysisSpec(
        metrics=(
            MetricSpec("error_rate", MetricKind.ERRORS),
            MetricSpec("cpu", MetricKind.GAUGE, gauge="cpu", must_have_data=False, critical=False),
        )
    )
    _, v = run(Traffic(), seed=7, spec=spec)
    assert v.decision is Decision.PASS


def test_duplicates_are_ignored_and_order_does_not_matter():
    rng = np.random.default_rng(8)
    history = Traffic().history(rng)  # fixes the latency thresholds before the canary starts
    windows = [Traffic(err_ratio=1.5).window(rng, T0 + 10 * k) for k in range(60)]
    a = Judge(AnalysisSpec(), start=T0)
    b = Judge(AnalysisSpec(), start=T0)
    for j in (a, b):
        j.set_weight(T0, 0.1)
        j.add_many(history)
    for c, base in windows:
        a.add(c)
        a.add(base)
    for c, base in reversed(windows):
        b.add(base)
        b.add(c)
        b.add(c)  # a retried push
    assert b.duplicates == 60
    va, vb = a.evaluate(T0 + 600), b.evaluate(T0 + 600)
    assert va.decision == vb.decision
    for ea, eb in zip(va.evidence, vb.evidence, strict=True):
        assert ea.e_value_fail == pytest.approx(eb.e_value_fail, rel=1e-9)
        assert ea.canary_n == eb.canary_n


def test_warmup_windows_are_ignored():
    spec = AnalysisSpec(warmup_s=60)
    rng = np.random.default_rng(9)
    j = Judge(spec, start=T0)
    j.set_weight(T0, 0.1)
    for k in range(12):
        c, b = Traffic().window(rng, T0 + 10 * k)
        j.add(c)
        j.add(b)
    assert j.windows == 6
    assert j.ignored == 12


def test_traffic_steps_within_one_deploy_do_not_fail_a_healthy_canary():
    rng = np.random.default_rng(10)
    t = Traffic()
    j = Judge(AnalysisSpec(), start=T0)
    j.set_weight(T0, 0.1)
    j.set_weight(T0 + 300, 0.5)
    for k in range(90):
        w = 0.1 if k < 30 else 0.5
        c, b = t.window(rng, T0 + 10 * k, weight=w)
        j.add(c)
        j.add(b)
        assert j.decide(c.end) is not Decision.FAIL
    assert j.weight_at(T0 + 299) == 0.1 and j.weight_at(T0 + 300) == 0.5


def test_pre_post_mode_says_it_is_weaker_and_still_catches_a_big_regression():
    _j, v = run(Traffic(err_ratio=4.0, weight=0.999), seed=11, mode=BaselineMode.PRE_POST)
    assert v.mode == "pre_post"
    assert v.decision is Decision.FAIL
    assert "pre-deploy window" in v.summary
    assert all(e.metric != "throughput" for e in v.evidence)


def test_pre_post_mode_healthy_deploy_does_not_fail():
    _, v = run(Traffic(weight=0.999), seed=12, mode=BaselineMode.PRE_POST, looks=60)
    assert v.decision is not Decision.FAIL


def _gauge_spec(**kw) -> AnalysisSpec:
    return AnalysisSpec(
        metrics=(
            MetricSpec("cpu", MetricKind.GAUGE, gauge="cpu", allowed_change=0.1, critical_change=0.3, **kw),
        )
    )


def _gauge_run(spec: AnalysisSpec, canary_factor: float, seed: int, windows: int = 60):
    rng = np.random.default_rng(seed)
    j = Judge(spec, start=T0)
    j.set_weight(T0, 0.1)
    v = None
    for k in range(windows):
        base = 0.4 + 0.05 * rng.standard_normal()
        j.add(
            Sample(
                Track.CANARY,
                T0 + 10 * k,
                T0 + 10 * k + 10,
                200,
                0,
                gauges={"cpu": canary_factor * (0.4 + 0.05 * rng.standard_normal())},
            )
        )
        j.add(Sample(Track.BASELINE, T0 + 10 * k, T0 + 10 * k + 10, 1800, 0, gauges={"cpu": base}))
        v = j.evaluate(T0 + 10 * k + 10)
        if v.decision in (Decision.FAIL, Decision.PASS):
            break
    return v


def test_gauge_well_above_baseline_fails_and_equal_gauge_passes():
    assert _gauge_run(_gauge_spec(), 1.6, seed=13).decision is Decision.FAIL
    assert _gauge_run(_gauge_spec(), 1.0, seed=14).decision is Decision.PASS


def test_gauge_verdict_is_invariant_to_units():
    spec = _gauge_spec()
    a = _gauge_run(spec, 1.6, seed=15)
    rng_scale = 1000.0  # e.g. millicores instead of cores

    rng = np.random.default_rng(15)
    j = Judge(spec, start=T0)
    j.set_weight(T0, 0.1)
    v = None
    for k in range(60):
        base = 0.4 + 0.05 * rng.standard_normal()
        j.add(
            Sample(
                Track.CANARY,
                T0 + 10 * k,
                T0 + 10 * k + 10,
                200,
                0,
                gauges={"cpu": rng_scale * 1.6 * (0.4 + 0.05 * rng.standard_normal())},
            )
        )
        j.add(
            Sample(Track.BASELINE, T0 + 10 * k, T0 + 10 * k + 10, 1800, 0, gauges={"cpu": rng_scale * base})
        )
        v = j.evaluate(T0 + 10 * k + 10)
        if v.decision in (Decision.FAIL, Decision.PASS):
            break
    assert (v.decision, v.decided_at) == (a.decision, a.decided_at)


def _raw_run(factor: float, seed: int, windows: int = 60):
    rng = np.random.default_rng(seed)
    spec = AnalysisSpec(metrics=(MetricSpec("latency_p95", MetricKind.LATENCY, quantile=0.95),))
    j = Judge(spec, start=T0)
    j.set_weight(T0, 0.5)
    v = None
    for k in range(windows):
        lat_c = tuple(factor * np.exp(np.log(0.1) + 0.5 * rng.standard_normal(100)))
        lat_b = tuple(np.exp(np.log(0.1) + 0.5 * rng.standard_normal(100)))
        j.add(Sample(Track.CANARY, T0 + 10 * k, T0 + 10 * k + 10, 100, 0, latencies=lat_c))
        j.add(Sample(Track.BASELINE, T0 + 10 * k, T0 + 10 * k + 10, 100, 0, latencies=lat_b))
        v = j.evaluate(T0 + 10 * k + 10)
        if v.decision in (Decision.FAIL, Decision.PASS):
            break
    return v


def test_raw_latencies_use_quantile_confidence_sequences():
    slow = _raw_run(2.0, seed=16)
    assert slow.decision is Decision.FAIL
    assert "raw canary latencies" in slow.evidence[0].detail
    same = _raw_run(1.0, seed=17)
    assert same.decision is not Decision.FAIL


def test_custom_counter_ratio_metric_fails_on_a_regression():
    spec = AnalysisSpec(
        metrics=(
            MetricSpec(
                "payment_failures",
                MetricKind.COUNTER_RATIO,
                numerator="payments_failed",
                denominator="payments",
            ),
        )
    )
    rng = np.random.default_rng(18)
    j = Judge(spec, start=T0)
    j.set_weight(T0, 0.1)
    v = None
    for k in range(120):
        pc, pb = rng.poisson(50), rng.poisson(450)
        j.add(
            Sample(
                Track.CANARY,
                T0 + 10 * k,
                T0 + 10 * k + 10,
                200,
                0,
                gauges={"payments": pc, "payments_failed": rng.binomial(pc, 0.06)},
            )
        )
        j.add(
            Sample(
                Track.BASELINE,
                T0 + 10 * k,
                T0 + 10 * k + 10,
                1800,
                0,
                gauges={"payments": pb, "payments_failed": rng.binomial(pb, 0.02)},
            )
        )
        v = j.evaluate(T0 + 10 * k + 10)
        if v.decision is Decision.FAIL:
            break
    assert v.decision is Decision.FAIL
    assert "payments_failed/payments" in v.evidence[0].detail


def test_non_critical_failure_blocks_pass_but_does_not_fail():
    spec = AnalysisSpec(
        metrics=(
            MetricSpec("error_rate", MetricKind.ERRORS),
            MetricSpec("latency_p99", MetricKind.LATENCY, quantile=0.99, critical=False),
        ),
        max_duration_s=900,
    )
    _, v = run(Traffic(canary_sigma=0.674), seed=19, spec=spec, looks=90)
    assert v.decision is Decision.INCONCLUSIVE
    assert next(e for e in v.evidence if e.metric == "latency_p99").status is MetricStatus.FAIL


def test_no_decision_before_minimum_canary_requests():
    spec = AnalysisSpec(min_canary_requests=10_000)
    _, v = run(Traffic(err_ratio=10), seed=20, spec=spec, looks=20)
    assert v.decision is Decision.CONTINUE


def test_a_fail_is_final():
    j, v = run(Traffic(err_ratio=5), seed=21)
    assert v.decision is Decision.FAIL
    rng = np.random.default_rng(0)
    for k in range(100):
        c, b = Traffic().window(rng, T0 + 5000 + 10 * k)
        j.add(c)
        j.add(b)
    assert j.evaluate().decision is Decision.FAIL
    assert j.evaluate().decided_at == v.decided_at


def test_decide_agrees_with_evaluate():
    for seed, traffic in [(22, Traffic()), (23, Traffic(err_ratio=2)), (24, Traffic(canary_sigma=0.6))]:
        rng = np.random.default_rng(seed)
        a, b = Judge(AnalysisSpec(), start=T0), Judge(AnalysisSpec(), start=T0)
        for j in (a, b):
            j.set_weight(T0, 0.1)
        for k in range(120):
            c, base = traffic.window(rng, T0 + 10 * k)
            for j in (a, b):
                j.add(c)
                j.add(base)
            assert a.decide(c.end) is b.evaluate(c.end).decision


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"bounds": (0.1, 0.2), "counts": (1, 2)}, "latency_histogram.counts"),
        ({"bounds": (0.2, 0.1), "counts": (1, 2, 3)}, "latency_histogram.bounds"),
        ({"bounds": (0.1, math.inf), "counts": (1, 2, 3)}, "latency_histogram.bounds"),
        ({"bounds": (0.1, 0.2), "counts": (1, -2, 3)}, "latency_histogram.counts"),
    ],
)
def test_bad_histograms_name_the_field(kwargs, field):
    with pytest.raises(ValidationError) as err:
        Histogram(**kwargs)
    assert err.value.field == field


def test_bad_samples_name_the_field():
    with pytest.raises(ValidationError) as err:
        Sample(Track.CANARY, 10.0, 5.0, 1, 0)
    assert err.value.field == "end"
    with pytest.raises(ValidationError) as err:
        Sample(Track.CANARY, 0.0, 5.0, 1, 2)
    assert err.value.field == "errors"


def test_spec_validation_names_the_key():
    with pytest.raises(ValidationError) as err:
        AnalysisSpec(alpha=0.7)
    assert err.value.field == "analysis.alpha"
    with pytest.raises(ValidationError) as err:
        MetricSpec("x", MetricKind.ERRORS, allowed_change=0.5, critical_change=0.2)
    assert "critical_change" in err.value.field
    with pytest.raises(ValidationError):
        MetricSpec("g", MetricKind.GAUGE)
    assert MetricSpec("thr", MetricKind.THROUGHPUT, direction=Direction.DECREASE, critical_change=0.3)


def _crash(seed: int, stop_s: float, *, history: bool = True, looks: int = 120):
    """A healthy canary that stops serving at ``stop_s`` (0 requests) while the baseline serves."""
    rng = np.random.default_rng(seed)
    t = Traffic()
    j = Judge(AnalysisSpec(), start=T0)
    j.set_weight(T0, t.weight)
    if history:
        j.add_many(t.history(rng))
    first_empty = None
    for k in range(looks):
        c, b = t.window(rng, T0 + 10 * k)
        if c.start >= T0 + stop_s:
            c = Sample(
                Track.CANARY, c.start, c.end, 0, 0, Histogram(c.latency.bounds, (0,) * len(c.latency.counts))
            )
            first_empty = c.end if first_empty is None else first_empty
        j.add(c)
        j.add(b)
        v = j.evaluate(c.end)
        if v.decision is Decision.FAIL:  # a PASS does not stop the judge: the canary goes on serving
            return v, first_empty
    return v, first_empty


@pytest.mark.parametrize(
    "seed,stop_s,history", [(11, 60, True), (12, 250, False), (13, 600, True), (14, 1200, True)]
)
def test_a_canary_that_stops_serving_fails_within_30_s_of_its_first_empty_window(seed, stop_s, history):
    v, first_empty = _crash(seed, stop_s, history=history, looks=150)
    assert v.decision is Decision.FAIL, v.summary
    assert first_empty is not None and v.decided_at - first_empty <= 30  # before: 100-190 s later
    thr = next(e for e in v.evidence if e.metric == "throughput")
    assert thr.status is MetricStatus.FAIL
    assert "served no request in its last" in thr.detail


def test_a_canary_that_never_serves_fails_instead_of_waiting_for_requests_it_will_never_get():
    """min_canary_requests gates decisions on canary requests; throughput is gated on the requests the
    canary was given, or a canary that crashes on start would hold until the analysis window ends."""
    rng = np.random.default_rng(15)
    t = Traffic()
    j = Judge(AnalysisSpec(), start=T0)
    j.set_weight(T0, t.weight)
    j.add_many(t.history(rng))
    for k in range(12):
        c, b = t.window(rng, T0 + 10 * k)
        j.add(Sample(Track.CANARY, c.start, c.end, 0, 0))
        j.add(b)
        v = j.evaluate(c.end)
        if v.decision is not Decision.CONTINUE:
            break
    assert v.decision is Decision.FAIL
    assert v.decided_at - T0 <= 60


def test_traffic_that_dips_on_both_tracks_does_not_fail_throughput():
    """A quiet minute (1% of the usual traffic, where a window may see no canary request) is not a crash."""
    rng = np.random.default_rng(16)
    t = Traffic()
    quiet = Traffic(rate=t.rate * 0.01)
    silent_windows = 0
    for _ in range(40):
        j = Judge(AnalysisSpec(), start=T0)
        j.set_weight(T0, t.weight)
        j.add_many(t.history(rng))
        for k in range(60):
            c, b = (quiet if 20 <= k < 26 or 40 <= k < 46 else t).window(rng, T0 + 10 * k)
            silent_windows += c.requests == 0
            j.add(c)
            j.add(b)
            thr = next(e for e in j.evaluate(c.end).evidence if e.metric == "throughput")
            assert thr.status is not MetricStatus.FAIL, thr.detail
    assert silent_windows > 0  # the dips did leave the canary without a request now and then


def test_the_analysis_window_is_each_steps_so_a_late_step_gets_a_full_one():
    """max_duration_s counts from the step taking effect: a step that started at minute 9 of a 10-min
    window is not declared inconclusive a minute later (it was, when the window ran per deploy)."""
    rng = np.random.default_rng(17)
    t = Traffic(rate=20)  # too little traffic to decide anything soon
    j = Judge(AnalysisSpec(max_duration_s=600), start=T0)
    j.mark_step(T0)
    j.set_weight(T0, 0.1)
    for k in range(54):
        c, b = t.window(rng, T0 + 10 * k)
        j.add_many((c, b))
    assert j.decide(T0 + 540) is Decision.CONTINUE
    j.mark_step(T0 + 540)  # e.g. promoted by hand to 50% at minute 9
    j.set_weight(T0 + 540, 0.5)
    for k in range(54, 120):
        c, b = t.window(rng, T0 + 10 * k, weight=0.5)
        j.add_many((c, b))
        d = j.decide(c.end)
        assert d is not Decision.INCONCLUSIVE or c.end >= T0 + 540 + 600, c.end
    assert j.deadline(T0 + 600) == T0 + 1140
    assert j.evaluate(T0 + 1200).decision is Decision.INCONCLUSIVE


def test_warm_up_applies_to_each_step():
    rng = np.random.default_rng(18)
    t = Traffic()
    j = Judge(AnalysisSpec(warmup_s=30), start=T0)
    for at, w in ((T0, 0.1), (T0 + 300, 0.5)):
        j.mark_step(at)
        j.set_weight(at, w)
    for k in range(60):
        c, b = t.window(rng, T0 + 10 * k, weight=0.1 if k < 30 else 0.5)
        j.add_many((c, b))
    assert j.windows == 60 - 3 - 3  # the first 30 s of each step are left out
