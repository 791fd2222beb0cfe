"""How long the analysis needs at a traffic: the estimate said at marker time and while a deploy runs."""

import numpy as np
import pytest

from guardrail.domain.judge import AnalysisSpec, Judge
from guardrail.domain.judge.planning import plan
from guardrail.domain.model import Decision
from tests.domain.traffic import T0, Traffic


def test_low_traffic_is_said_to_end_inconclusive_with_what_follows_and_what_to_change():
    o = plan(
        AnalysisSpec(), total_rps=20, error_rate=0.005, canary_share=0.1, on_inconclusive="hold", basis="b"
    )
    assert o.likely_inconclusive and o.metric == "error_rate"
    assert o.needs_s > 3 * 1800
    assert "expect INCONCLUSIVE, then held for a human (on_inconclusive: hold)" in o.sentence
    assert "on_inconclusive: rollback" in o.sentence and "max_duration_s" in o.sentence
    back = plan(
        AnalysisSpec(),
        total_rps=20,
        error_rate=0.005,
        canary_share=0.1,
        on_inconclusive="rollback",
        basis="b",
    )
    assert "then rolled back (on_inconclusive: rollback)" in back.sentence


def test_enough_traffic_is_said_to_fit_the_window():
    o = plan(
        AnalysisSpec(), total_rps=200, error_rate=0.005, canary_share=0.1, on_inconclusive="hold", basis="b"
    )
    assert not o.likely_inconclusive and o.needs_s < 1800
    assert "within the 30 min window of a step" in o.sentence


def test_the_estimate_scales_with_traffic_share_and_error_rate():
    base = dict(on_inconclusive="hold", basis="b")
    a = plan(AnalysisSpec(), total_rps=200, error_rate=0.005, canary_share=0.1, **base).needs_s
    assert plan(
        AnalysisSpec(), total_rps=400, error_rate=0.005, canary_share=0.1, **base
    ).needs_s == pytest.approx(a / 2)
    assert plan(AnalysisSpec(), total_rps=200, error_rate=0.01, canary_share=0.1, **base).needs_s < a
    assert plan(AnalysisSpec(), total_rps=200, error_rate=0.005, canary_share=0.5, **base).needs_s < a
    none = plan(AnalysisSpec(), total_rps=200, error_rate=0.0, canary_share=0.1, **base)
    assert none.needs_s is None and "cannot estimate" in none.sentence


def test_the_estimate_is_the_typical_time_the_judge_takes_to_pass_a_healthy_canary():
    """Against the real judge on simulated healthy canaries at 200 req/s: the median time to an early
    PASS is close to the estimate (it is a planning figure, not a bound)."""
    t = Traffic()
    spec = AnalysisSpec(max_duration_s=7200)
    passes = []
    for seed in range(20):
        rng = np.random.default_rng(seed)
        j = Judge(spec, start=T0)
        j.mark_step(T0)
        j.set_weight(T0, t.weight)
        j.add_many(t.history(rng))
        for k in range(360):
            c, b = t.window(rng, T0 + 10 * k)
            j.add_many((c, b))
            d = j.decide(c.end)
            if d is not Decision.CONTINUE:
                break
        if d is Decision.PASS:
            passes.append(c.end - T0)
    est = plan(
        spec, total_rps=t.rate, error_rate=t.p_err, canary_share=t.weight, on_inconclusive="hold", basis="b"
    )
    assert len(passes) >= 18
    assert 0.6 <= float(np.median(passes)) / est.needs_s <= 1.3


def test_a_running_deploy_says_what_is_left_of_its_step_window():
    rng = np.random.default_rng(3)
    t = Traffic(rate=20)
    j = Judge(AnalysisSpec(), start=T0)
    j.mark_step(T0)
    j.set_weight(T0, t.weight)
    j.add_many(t.history(rng))
    for k in range(30):
        j.add_many(t.window(rng, T0 + 10 * k))
    v = j.evaluate(T0 + 300)
    assert v.decision is Decision.CONTINUE
    o = v.outlook
    assert o is not None and o.basis == "this deploy's traffic so far" and o.remaining_s == 1500
    assert o.likely_inconclusive and "this step's window ends in 25 min" in o.sentence
    assert v.to_dict()["outlook"]["likely_inconclusive"] is True
