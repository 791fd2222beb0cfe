"""The count tests against values computed by hand (exact binomial, small n)."""

import math

import numpy as np
import pytest
from scipy.stats import binom, poisson

from guardrail.domain.judge.counts import (
    PRIOR_DISPERSION,
    ConcurrentCountTest,
    Pearson,
    PrePostCountTest,
    Sides,
    SilenceTest,
    baseline_dispersion,
    canary_dispersion,
    dispersion,
    one_sided_log_prior,
    poisson_rate_bounds,
)
from guardrail.domain.model import Direction

INC = Sides(Direction.INCREASE, 0.0, 0.5)


def _by_hand_fail(
    test: ConcurrentCountTest, windows: list[tuple[int, int, float]], phi: float = 1.0
) -> float:
    """Mixture over the grid of (prod_i Binom(x_i; n_i, pi_i(r)) / Binom(x_i; n_i, pi_i(1)))^(1/phi)."""
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
        total += weight * lr ** (1 / phi)
    return total


def test_fail_e_value_matches_exact_binomial_mixture():
    t = ConcurrentCountTest(INC)
    windows = [(3, 5, 0.1), (2, 4, 0.1), (4, 6, 0.5)]  # (canary events, all events, canary share)
    for x, n, w in windows:
        t.add(x, n - x, w, 100 * w, 100 * (1 - w))
    r = t.evaluate(0.01, 0.05)
    assert r.dispersion > 1  # three windows cannot tell bursts from noise: the prior still tempers
    assert math.exp(r.log_e_fail) == pytest.approx(_by_hand_fail(t, windows, r.dispersion), rel=1e-9)


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
    assert baseline_dispersion(calm) == pytest.approx(1.0, abs=0.2)
    assert baseline_dispersion(bursty) > 4


def test_dispersion_starts_conservative_and_binomial_windows_bring_it_down():
    """Before any window the data cannot tell bursts from noise: the prior tempers the first looks."""
    rng = np.random.default_rng(5)
    canary, baseline = Pearson(), Pearson()
    first = dispersion(canary, baseline, 0.1)
    assert first == pytest.approx(PRIOR_DISPERSION)
    phis = []
    for _ in range(60):
        canary.add(rng.poisson(1), 200)
        baseline.add(rng.poisson(9), 1800)
        phis.append(dispersion(canary, baseline, 0.1))
    assert phis[3] == pytest.approx(PRIOR_DISPERSION, rel=0.2)  # 4 windows: too few to tell
    assert phis[10] < 1.6 and phis[-1] < 1.2  # the data take over


def test_a_one_instance_canary_is_tempered_by_its_own_bursts_not_the_baseline_average():
    """x_canary given the total has dispersion (1 - pi) phi_c + pi phi_b: at a 10% share the canary's."""
    rng = np.random.default_rng(6)
    canary, baseline = Pearson(), Pearson()
    for _ in range(400):
        clusters = rng.poisson(1 / 4)
        canary.add(rng.geometric(1 / 4, size=clusters).sum(), 200)  # bursts of mean 4: phi about 7
        baseline.add(rng.poisson(9), 1800)
    phi_b = baseline_dispersion(baseline)
    phi_c = canary_dispersion(canary, phi_b)
    assert phi_c > 4 and phi_b < 1.3
    assert dispersion(canary, baseline, 0.1) == pytest.approx(0.9 * phi_c + 0.1 * phi_b, rel=0.02)
    (s_c, df_c), (s_b, df_b) = canary.statistic(), baseline.statistic()
    pooled = (s_c + s_b) / (df_c + df_b)  # both tracks' statistics pooled: the baseline halves it
    assert dispersion(canary, baseline, 0.1) > 1.4 * pooled


def test_silence_e_value_is_the_weighted_sum_over_start_times_by_hand():
    """A canary that served, then got nothing in two windows of 1800 baseline requests at 10%."""
    t = SilenceTest(r0=0.9)
    t.add(20, 180, 0.1, 1.0, 0.0)  # serving: window 1
    t.add(0, 1800, 0.1, 2.0, 10.0)  # silent: window 2
    t.add(0, 1800, 0.1, 2.0, 20.0)  # silent: window 3
    pi0 = 0.9 * 0.1 / (0.9 * 0.1 + 0.9)
    p = (1 - pi0) ** (1800 / 2.0)
    by_hand = (1 / (2 * 3)) / p / p + (1 / (3 * 4)) / p
    assert t.log_e == pytest.approx(math.log(by_hand), rel=1e-9)
    assert (t.silent, t.silent_since) == (2, 10.0)
    t.add(5, 1800, 0.1, 2.0, 30.0)  # it serves again: every start time before dies
    assert t.log_e == -math.inf and t.silent == 0


def test_silence_needs_a_canary_that_served_and_a_share_and_someone_serving():
    t = SilenceTest(r0=0.9)
    t.add(0, 1800, 0.1, 1.0, 0.0)  # never served yet: the share test's business
    t.add(10, 90, 0.0, 1.0, 10.0)  # no share given
    assert t.index == 0
    t.add(10, 90, 0.1, 1.0, 20.0)
    t.add(0, 0, 0.1, 1.0, 30.0)  # nobody served: an outage of both, no evidence
    t.add(0, 1800, 1.0, 1.0, 40.0)  # all traffic on the canary: no baseline to compare with
    assert t.log_e == -math.inf


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
