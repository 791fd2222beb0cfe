"""Seeded statistical calibration, sized to run in seconds (the full benchmark is in bench/)."""

import numpy as np

from guardrail.domain.judge import AnalysisSpec, Judge
from guardrail.domain.model import Decision, Sample
from tests.domain.traffic import T0, Traffic


def _false_fails(runs: int, alpha: float, seed: int, bursty: bool = False) -> int:
    rng = np.random.default_rng(seed)
    spec = AnalysisSpec(alpha=alpha, max_duration_s=900)
    t = Traffic()
    fails = 0
    for _ in range(runs):
        j = Judge(spec, start=T0)
        j.set_weight(T0, t.weight)
        j.add_many(_bursty(s, rng) if bursty else s for s in t.history(rng))
        for k in range(90):
            c, b = t.window(rng, T0 + 10 * k)
            if bursty:
                c, b = _bursty(c, rng), _bursty(b, rng)
            j.add(c)
            j.add(b)
            d = j.decide(c.end)
            if d is Decision.FAIL:
                fails += 1
            if d is not Decision.CONTINUE:
                break
    return fails


def _bursty(s: Sample, rng: np.random.Generator) -> Sample:
    """Same mean error rate, errors in geometric clusters of mean 4 (a retry storm)."""
    clusters = rng.poisson(s.requests * 0.005 / 4)
    errors = min(int(rng.geometric(0.25, size=clusters).sum()), s.requests)
    return Sample(s.track, s.start, s.end, s.requests, errors, s.latency)


def test_false_rollbacks_stay_within_alpha_under_continuous_monitoring():
    # 300 healthy deploys, looked at every 10 s for up to 15 min, alpha 0.05 for a visible count:
    # a test peeked at 90 times without correction would fail a large share of them.
    fails = _false_fails(300, 0.05, seed=42)
    assert fails <= 15  # alpha * runs


def test_calibration_holds_with_errors_in_bursts():
    fails = _false_fails(150, 0.05, seed=43, bursty=True)
    assert fails <= 8


def test_a_doubled_error_rate_is_caught_in_most_deploys():
    rng = np.random.default_rng(44)
    t = Traffic(err_ratio=3.0)
    caught = 0
    for _ in range(40):
        j = Judge(AnalysisSpec(), start=T0)
        j.set_weight(T0, t.weight)
        j.add_many(t.history(rng, minutes=2))
        for k in range(90):
            c, b = t.window(rng, T0 + 10 * k)
            j.add(c)
            j.add(b)
            if j.decide(c.end) is Decision.FAIL:
                caught += 1
                break
    assert caught >= 38


def _bursty_both_no_history(runs: int, seed: int, looks: int = 30) -> int:
    """Healthy canaries, errors in bursts on both tracks, no pre-deploy window: the first looks see
    a handful of windows, too few to estimate the dispersion from."""
    rng = np.random.default_rng(seed)
    t = Traffic()
    fails = 0
    for _ in range(runs):
        j = Judge(AnalysisSpec(), start=T0)
        j.set_weight(T0, t.weight)
        for k in range(looks):
            c, b = t.window(rng, T0 + 10 * k)
            j.add(_bursty(c, rng))
            j.add(_bursty(b, rng))
            d = j.decide(c.end)
            if d is Decision.FAIL:
                fails += 1
            if d is not Decision.CONTINUE:
                break
    return fails


def test_calibration_holds_from_the_first_look_without_history():
    """At deploy alpha 0.01, with bursts of mean 4 (dispersion about 7) and no pre-deploy window:
    before the dispersion prior, about 11% of these failed within the first minutes."""
    fails = _bursty_both_no_history(300, seed=44)
    assert fails <= 6  # 2% of 300: the Wilson upper bound of the 1% budget at this size
