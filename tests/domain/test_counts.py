"""The count tests against values computed by hand (exact binomial, small n)."""

import math

import numpy as np
import pytest
from scipy.stats import binom, poisson

from guardrail.domain.judge.counts import (
    ConcurrentCountTest,
    Pearson,
    PrePostCountTest,
    Sides,
    dispersion,
    one_sided_log_prior,
    poisson_rate_bounds,
)
from guardrail.domain.model import Direction

INC = Sides(Direction.INCREASE, 0.0, 0.5)


def _by_hand_fail(test: ConcurrentCountTest, windows: list[tuple[int, int, float]]) -> float:
    """Mixture over the grid of prod_i Binom(x_i; n_i, pi_i(r)) / Binom(x_i; n_i, pi_i(1))."""
    grid = test.bank.grid
    prior = np.exp(one_sided_log_prior(grid, 0.0, True))
    total = 0.0
    for weight, theta in zip(prior, grid, strict=True):
        if weight == 0:
            continue
        lr = 1.0
        for x, n, w in windows:
            pi = math.exp(theta) * w / (math.exp(theta) * w + 1 - w)
            lr *= binom.pmf(x, n, pi) / binom.pmf(x, n, w)
        total += weight * lr
    return total


def test_fail_e_value_matches_exact_binomial_mixture():
    t = ConcurrentCountTest(INC)
    windows = [(3, 5, 0.1), (2, 4, 0.1), (4, 6, 0.5)]  # (canary events, all events, canary share)
    for x, n, w in windows:
        t.add(x, n - x, w, 100 * w, 100 * (1 - w))
    r = t.evaluate(0.01, 0.05)
    assert math.exp(r.log_e_fail) == pytest.approx(_by_hand_fail(t, windows), rel=1e-9)


def test_no_canary_events_gives_no_evidence_against_the_canary():
    t = ConcurrentCountTest(INC)
    t.add(0, 20, 0.1, 1000, 9000)
    r = t.evaluate(0.01, 0.05)
    assert r.log_e_fail < 0  # the canary looks better: evidence for, not against
    assert r.estimate == 0.0


def test_confidence_sequence_covers_estimate_and_shrinks_with_data():
    t = ConcurrentCountTest(INC)
    t.add(10, 90, 0.1, 1000, 9000)
    r1 = t.evaluate(0.01, 0.05)
    for _ in range(20):
        t.add(10, 90, 0.1, 1000, 9000)
    r2 = t.evaluate(0.01, 0.05)
    assert r1.ci_low <= 1.0 <= r1.ci_high
    assert r2.ci_low <= 1.0 <= r2.ci_high
    assert (r2.ci_high - r2.ci_low) < (r1.ci_high - r1.ci_low)


def test_pearson_dispersion_of_poisson_counts_is_near_one_and_of_bursts_is_large():
    rng = np.random.default_rng(3)
    calm, bursty = Pearson(), Pearson()
    for _ in range(400):
        calm.add(rng.poisson(9), 1800)
        clusters = rng.poisson(9 / 4)
        bursty.add(rng.geometric(1 / 4, size=clusters).sum(), 1800)
    assert dispersion(calm) == pytest.approx(1.0, abs=0.2)
    assert dispersion(bursty) > 4


def test_poisson_bounds_are_garwood_exact():
    lo, hi = poisson_rate_bounds(10, 100.0, 0.025)
    # at the bounds the tail probability equals alpha
    assert poisson.sf(9, lo * 100) == pytest.approx(0.025, rel=1e-6)
    assert poisson.cdf(10, hi * 100) == pytest.approx(0.025, rel=1e-6)


def test_pre_post_detects_a_tripled_rate_and_not_an_equal_one():
    same, worse = PrePostCountTest(INC), PrePostCountTest(INC)
    for t in (same, worse):
        t.add_history(50, 10_000)  # 0.5% before the deploy
    same.add(50, 10_000)
    worse.add(150, 10_000)
    assert same.evaluate(0.01, 0.05).log_e_fail < math.log(100)
    assert worse.evaluate(0.01, 0.05).log_e_fail > math.log(100)
