"""Invariants of the judge, checked with Hypothesis."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from guardrail.domain.judge import AnalysisSpec, Judge, MetricKind, MetricSpec
from guardrail.domain.model import Decision, Histogram, Sample, Track
from tests.domain.traffic import T0, Traffic

ERRORS_ONLY = AnalysisSpec(metrics=(MetricSpec("error_rate", MetricKind.ERRORS),), min_canary_requests=0)
SEVERITY = {Decision.PASS: 0, Decision.CONTINUE: 1, Decision.INCONCLUSIVE: 1, Decision.FAIL: 2}

windows_st = st.lists(
    st.tuples(st.integers(1, 5000), st.integers(0, 60)).map(lambda t: (t[0], min(t[1], t[0]))),
    min_size=1,
    max_size=40,
)


def _judge(windows, canary_extra=0, weight=0.5, spec=ERRORS_ONLY, shift=0.0):
    j = Judge(spec, start=T0 + shift)
    j.set_weight(T0 + shift, weight)
    for k, (n, e) in enumerate(windows):
        s = T0 + shift + 10 * k
        j.add(Sample(Track.CANARY, s, s + 10, n, min(e + canary_extra, n)))
        j.add(Sample(Track.BASELINE, s, s + 10, n, e))
    return j


@settings(max_examples=150, deadline=None)
@given(windows_st)
def test_identical_arms_never_fail(windows):
    j = _judge(windows)
    v = j.evaluate()
    assert v.decision is not Decision.FAIL
    assert v.evidence[0].e_value_fail <= 1.0 + 1e-9


@settings(max_examples=150, deadline=None)
@given(windows_st, st.integers(0, 20))
def test_more_canary_errors_never_give_a_milder_verdict(windows, extra):
    base, worse = _judge(windows).evaluate(), _judge(windows, canary_extra=extra).evaluate()
    assert worse.evidence[0].e_value_fail >= base.evidence[0].e_value_fail * (1 - 1e-9)
    assert worse.evidence[0].e_value_pass <= base.evidence[0].e_value_pass * (1 + 1e-9)
    assert SEVERITY[worse.decision] >= SEVERITY[base.decision]


@settings(max_examples=60, deadline=None)
@given(windows_st, st.floats(-1e8, 1e8))
def test_verdict_does_not_depend_on_when_the_deploy_happened(windows, shift):
    a = _judge(windows, canary_extra=2).evaluate()
    b = _judge(windows, canary_extra=2, shift=shift).evaluate()
    assert a.decision is b.decision
    assert a.evidence[0].e_value_fail == b.evidence[0].e_value_fail
    if a.decided_at is not None:
        assert abs((b.decided_at - shift) - a.decided_at) < 1e-3


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from([0.001, 1000.0, 37.5]))
def test_latency_verdict_is_invariant_to_the_unit_of_time(seed, scale):
    """Histograms in other units (bounds and values scaled alike) give the same verdict."""
    spec = AnalysisSpec(metrics=(MetricSpec("latency_p99", MetricKind.LATENCY, quantile=0.99),))
    t = Traffic(canary_sigma=0.6)

    def verdict(k: float):
        rng = np.random.default_rng(seed)
        j = Judge(spec, start=T0)
        j.set_weight(T0, 0.1)
        for s in t.history(rng, minutes=3):
            j.add(_scale(s, k))
        for i in range(30):
            c, b = t.window(rng, T0 + 10 * i)
            j.add(_scale(c, k))
            j.add(_scale(b, k))
        return j.evaluate()

    a, b = verdict(1.0), verdict(scale)
    assert a.decision is b.decision
    assert a.evidence[0].e_value_fail == b.evidence[0].e_value_fail


def _scale(s: Sample, k: float) -> Sample:
    h = Histogram(tuple(b * k for b in s.latency.bounds), s.latency.counts)
    return Sample(s.track, s.start, s.end, s.requests, s.errors, h)
