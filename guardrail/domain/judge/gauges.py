"""Gauges (CPU, memory, DB pool use, any per-interval value): an anytime-valid paired sign test.

Each analysis window gives one canary value and one baseline value (or, without a concurrent
baseline, the pre-deploy mean). For a candidate ratio rho, the windows where canary > rho * baseline
are Bernoulli(p) with p <= 1/2 when the canary is not higher than rho times the baseline (the
median of the paired ratios is <= rho). A mixture over p of binomial likelihood ratios is an
e-process for that null. The test needs no distribution, is invariant to scale and units, and
counts windows, so memory is one pair of counters per candidate ratio.
"""

from __future__ import annotations

import math

import numpy as np

from guardrail.domain.judge.counts import (
    PRIOR_SCALE,
    Sides,
    interval_levels,
    logsumexp,
    make_grid,
    one_sided_log_prior,
)

_RHO_LOG = np.round(np.arange(-2.0, 2.0 + 1e-9, 0.05), 10)  # candidate ratios 0.14x .. 7.4x


class SignTest:
    def __init__(self, sides: Sides) -> None:
        self.sides = sides
        self.log_rho = np.union1d(_RHO_LOG, np.round(np.asarray(sides.points()), 10))
        self.rho = np.exp(self.log_rho)
        self.above = np.zeros(len(self.rho))
        self.below = np.zeros(len(self.rho))
        self.windows = 0
        self.sum_canary = 0.0
        self.sum_baseline = 0.0
        # theta = logit(p) grid for the Bernoulli mixtures
        self.theta = make_grid((0.0,))
        self._i0 = int(np.searchsorted(self.theta, 0.0))
        self._lp_up = one_sided_log_prior(self.theta, 0.0, True, PRIOR_SCALE * 2)
        self._lp_down = one_sided_log_prior(self.theta, 0.0, False, PRIOR_SCALE * 2)
        self._log_sig = -np.logaddexp(0.0, -self.theta)  # log p
        self._log_1msig = -np.logaddexp(0.0, self.theta)  # log (1 - p)

    def add(self, canary: float, baseline: float) -> None:
        self.windows += 1
        self.sum_canary += canary
        self.sum_baseline += baseline
        ref = self.rho * baseline
        self.above += canary > ref
        self.below += canary < ref

    def _ell(self, k: int) -> np.ndarray:
        x, y = self.above[k], self.below[k]
        return x * self._log_sig + y * self._log_1msig

    def _idx(self, log_ratio: float) -> int:
        return int(np.argmin(np.abs(self.log_rho - round(log_ratio, 10))))

    def _log_e(self, log_ratio: float, canary_higher: bool) -> float:
        """e-value against 'the median paired ratio is on the other side of exp(log_ratio)'."""
        ell = self._ell(self._idx(log_ratio))
        lp = self._lp_up if canary_higher else self._lp_down
        return float(logsumexp(lp + ell - ell[self._i0]))

    def _log_e_all(self, lp: np.ndarray) -> np.ndarray:
        """log e-value at every candidate ratio for the prior ``lp`` on logit p."""
        ell = self.above[:, None] * self._log_sig + self.below[:, None] * self._log_1msig
        v = ell + lp
        m = v.max(axis=1, keepdims=True)
        m = np.where(np.isfinite(m), m, 0.0)
        return (m[:, 0] + np.log(np.exp(v - m).sum(axis=1))) - ell[:, self._i0]

    def evaluate(
        self, alpha: float, pass_alpha: float
    ) -> tuple[float, float, float | None, float | None, float | None, float]:
        """(log e FAIL, log e PASS, CS low, CS high, estimate, coverage) for the median paired ratio."""
        fails = [self._log_e(t0, up) for t0, up in self.sides.fail_nulls()]
        log_e_fail = float(logsumexp(fails) - math.log(len(fails)))
        log_e_pass = min(self._log_e(tc, not up) for tc, up in self.sides.pass_nulls())
        a_lo, a_hi, level = interval_levels(self.sides, alpha, pass_alpha)
        keep_lo = np.flatnonzero(self._log_e_all(self._lp_up) < math.log(1 / a_lo))
        keep_hi = np.flatnonzero(self._log_e_all(self._lp_down) < math.log(1 / a_hi))
        last = len(self.rho) - 1
        lo = (
            (0.0 if keep_lo[0] == 0 else float(self.rho[keep_lo[0]])) if len(keep_lo) else float(self.rho[-1])
        )
        hi = (
            (math.inf if keep_hi[-1] == last else float(self.rho[keep_hi[-1]]))
            if len(keep_hi)
            else float(self.rho[0])
        )
        est = None
        n = self.above + self.below
        if self.windows:
            share_above = np.where(n > 0, self.above / np.maximum(n, 1), 0.5)
            k = int(np.searchsorted(-share_above, -0.5))  # first rho where at most half are above
            est = float(self.rho[min(k, last)])
        return log_e_fail, log_e_pass, lo, hi, est, level
