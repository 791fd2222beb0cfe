"""Anytime-valid tests on counts: errors, slow requests, requests (throughput), custom counters.

Concurrent canary and baseline (``ConcurrentCountTest``)
    Given n events in a window (x on the canary), x ~ Binomial(n, pi) with
    pi = r*w / (r*w + 1 - w), w the canary's exposure share in that window and r the canary /
    baseline rate ratio. Incidents that hit both tracks change n, not pi, so they cannot fail a
    canary. The log-likelihood of every window is added on a fixed grid of theta = log r (memory is
    the grid, whatever the traffic); each window uses its own w, so traffic steps (10% -> 50%) are
    handled without pooling.

Pre-deploy window as baseline (``PrePostCountTest``)
    Canary events are Poisson(E * p * r) against the baseline rate p of the pre-deploy window. p is
    replaced by an exact Poisson confidence bound (half of the metric's alpha), so the comparison is
    valid but weaker: it cannot tell a deploy from a change in the traffic.

Both give e-values by mixing likelihood ratios over the grid: FAIL tests H0 "r on the harmless side
of the allowed change" with a prior on the harmful side; PASS (non-inferiority) tests H0 "r at or
beyond the critical change" with a prior on the harmless side. A mixture of likelihood ratios is a
nonnegative martingale under its null, so by Ville's inequality the chance it ever crosses 1/alpha
is at most alpha: the guarantee holds however often the judge looks.

Overdispersion: real errors come in bursts. A Pearson dispersion estimate phi >= 1 of the per-window
counts (each track against its own pooled rate, pre-deploy history included) tempers the
log-likelihood (quasi-likelihood, l / phi). Under binomial traffic phi stays near 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.stats import chi2

from guardrail.domain.model import Direction

# theta = log(rate ratio) from 0.05x to 20x. Fixed points (allowed / critical change) are inserted.
_BASE_GRID = np.round(np.arange(-3.0, 3.0 + 1e-9, 0.04), 10)
PRIOR_SCALE = 0.4  # Rayleigh prior on the distance from the null, in log-ratio units (tuned in bench/)
CS_PRIOR_SCALE = 0.7  # normal prior around "no change" for the two-sided confidence sequence
MIN_DISPERSION_DF = 8


def logsumexp(a: np.ndarray | list[float]) -> float:
    """log(sum(exp(a))) without scipy's per-call overhead (this runs on every look)."""
    arr = np.asarray(a, dtype=float)
    m = arr.max()
    if not np.isfinite(m):
        return float(m)
    return float(m + np.log(np.exp(arr - m).sum()))


def make_grid(points: tuple[float, ...]) -> np.ndarray:
    return np.union1d(_BASE_GRID, np.round(np.asarray(points, dtype=float), 10))


def grid_index(grid: np.ndarray, theta: float) -> int:
    i = int(np.searchsorted(grid, round(theta, 10)))
    if i >= len(grid) or abs(grid[i] - round(theta, 10)) > 1e-9:
        raise ValueError(f"theta {theta} is not on the grid")
    return i


def one_sided_log_prior(
    grid: np.ndarray, theta0: float, harmful_up: bool, scale: float = PRIOR_SCALE
) -> np.ndarray:
    """Log weights of a Rayleigh prior on the distance from theta0 towards one side, normalised."""
    delta = (grid - theta0) if harmful_up else (theta0 - grid)
    with np.errstate(divide="ignore"):
        lp = np.where(delta > 1e-12, np.log(np.maximum(delta, 1e-300)) - 0.5 * (delta / scale) ** 2, -np.inf)
    return lp - logsumexp(lp)


def two_sided_log_prior(grid: np.ndarray, scale: float = CS_PRIOR_SCALE) -> np.ndarray:
    lp = -0.5 * (grid / scale) ** 2
    return lp - logsumexp(lp)


class Pearson:
    """Running Pearson statistic of counts k_i against exposures E_i at the pooled rate, O(1) memory."""

    __slots__ = ("m", "sum_e", "sum_k", "sum_k2_over_e")

    def __init__(self) -> None:
        self.m = 0
        self.sum_k2_over_e = 0.0
        self.sum_k = 0.0
        self.sum_e = 0.0

    def add(self, k: float, e: float) -> None:
        if e <= 0:
            return
        self.m += 1
        self.sum_k2_over_e += k * k / e
        self.sum_k += k
        self.sum_e += e

    def statistic(self) -> tuple[float, int]:
        """(Pearson chi-square, degrees of freedom)."""
        if self.m < 2 or self.sum_k <= 0:
            return 0.0, 0
        return self.sum_k2_over_e * self.sum_e / self.sum_k - self.sum_k, self.m - 1


def dispersion(*accumulators: Pearson) -> float:
    stat = 0.0
    df = 0
    for acc in accumulators:
        s, d = acc.statistic()
        stat += s
        df += d
    if df < MIN_DISPERSION_DF:
        return 1.0
    return float(min(max(stat / df, 1.0), 100.0))


@dataclass(frozen=True, slots=True)
class CountResult:
    log_e_fail: float
    log_e_pass: float
    ci_low: float | None  # ratio
    ci_high: float | None
    estimate: float | None
    dispersion: float


@dataclass(frozen=True, slots=True)
class Sides:
    """The FAIL and PASS hypotheses of one metric on the log-ratio scale."""

    direction: Direction
    allowed_change: float
    critical_change: float

    def fail_nulls(self) -> list[tuple[float, bool]]:
        """(theta0, harmful_up) for each FAIL test; 'either' has two, each at half the alpha."""
        up = (math.log1p(self.allowed_change), True)
        down = (math.log1p(-min(self.allowed_change, 0.99)), False)
        if self.direction is Direction.INCREASE:
            return [up]
        if self.direction is Direction.DECREASE:
            return [down]
        return [up, down]

    def pass_nulls(self) -> list[tuple[float, bool]]:
        """(theta_critical, harmful_up) for each PASS test; 'either' must pass both (intersection-union)."""
        up = (math.log1p(self.critical_change), True)
        down = (math.log1p(-min(self.critical_change, 0.99)), False)
        if self.direction is Direction.INCREASE:
            return [up]
        if self.direction is Direction.DECREASE:
            return [down]
        return [up, down]

    def points(self) -> tuple[float, ...]:
        return (*(t for t, _ in self.fail_nulls() + self.pass_nulls()), 0.0)


class _GridTests:
    """Priors and index bookkeeping shared by the two count tests.

    All priors sit in one matrix (FAIL sides, PASS sides, two-sided) so one evaluation is a single
    vectorised log-sum-exp over the grid.
    """

    def __init__(self, sides: Sides) -> None:
        self.sides = sides
        self.grid = make_grid(sides.points())
        fails = sides.fail_nulls()
        passes = sides.pass_nulls()
        self._fail_idx = [grid_index(self.grid, t0) for t0, _ in fails]
        self._pass_idx = [grid_index(self.grid, tc) for tc, _ in passes]
        self._priors = np.vstack(
            [one_sided_log_prior(self.grid, t0, up) for t0, up in fails]
            + [one_sided_log_prior(self.grid, tc, not up) for tc, up in passes]
            + [two_sided_log_prior(self.grid)]
        )
        self._n_fail = len(fails)

    def _mix(self, ell: np.ndarray) -> np.ndarray:
        """log of each prior's mixture of exp(ell)."""
        v = self._priors + ell
        m = v.max(axis=1)
        return m + np.log(np.exp(v - m[:, None]).sum(axis=1))

    def _sides(
        self, ell_fail: np.ndarray, ell_pass: np.ndarray | None = None
    ) -> tuple[list[float], list[float]]:
        """log e-values of each FAIL side and each PASS side."""
        mf = self._mix(ell_fail)
        mp = mf if ell_pass is None else self._mix(ell_pass)
        ep = ell_fail if ell_pass is None else ell_pass
        k = self._n_fail
        fails = [float(mf[j] - ell_fail[i]) for j, i in enumerate(self._fail_idx)]
        passes = [float(mp[k + j] - ep[i]) for j, i in enumerate(self._pass_idx)]
        return fails, passes

    def _tests(self, ell_fail: np.ndarray, ell_pass: np.ndarray | None = None) -> tuple[float, float]:
        """(log e FAIL, log e PASS). 'either' averages its two FAIL sides (alpha/2 each) and needs
        both PASS sides (intersection-union test, the weakest side counts)."""
        fails, passes = self._sides(ell_fail, ell_pass)
        log_e_fail = fails[0] if len(fails) == 1 else float(np.logaddexp(fails[0], fails[1]) - math.log(2))
        return log_e_fail, min(passes)

    def _cs(
        self, ell: np.ndarray, log_threshold: float, mix_two: float | None = None
    ) -> tuple[float | None, float | None]:
        two = float(self._mix(ell)[-1]) if mix_two is None else mix_two
        return _interval(self.grid, ell, two, log_threshold)


class CountBank:
    """The log-likelihood grids of every concurrent count metric of one judge, as one matrix.

    One judge evaluation is then a handful of vectorised operations whatever the number of metrics
    (the per-look cost matters when thousands of deploys are replayed, as in bench/).
    Rows of the prior tensor: FAIL sides (up to 2), PASS sides (up to 2), the two-sided prior.
    """

    _ROWS = 5

    def __init__(self) -> None:
        self._sides: list[Sides] = []
        self.grid: np.ndarray | None = None
        self.ell = np.zeros((0, 0))
        self._staged: list[tuple[int, float, float, float]] = []
        self._cache: tuple[int, tuple[float, ...], np.ndarray] | None = None
        self._version = 0

    def register(self, sides: Sides) -> int:
        if self.grid is not None:
            raise RuntimeError("register every metric before the first window")
        self._sides.append(sides)
        return len(self._sides) - 1

    def _build(self) -> None:
        grid = make_grid(tuple(p for s in self._sides for p in s.points()))
        m = len(self._sides)
        priors = np.full((m, self._ROWS, len(grid)), -np.inf)
        self.fail_idx: list[list[int]] = []
        self.pass_idx: list[list[int]] = []
        for r, sides in enumerate(self._sides):
            fails, passes = sides.fail_nulls(), sides.pass_nulls()
            for j, (t0, up) in enumerate(fails):
                priors[r, j] = one_sided_log_prior(grid, t0, up)
            for j, (tc, up) in enumerate(passes):
                priors[r, 2 + j] = one_sided_log_prior(grid, tc, not up)
            priors[r, 4] = two_sided_log_prior(grid)
            self.fail_idx.append([grid_index(grid, t0) for t0, _ in fails])
            self.pass_idx.append([grid_index(grid, tc) for tc, _ in passes])
        self.grid = grid
        self.priors = priors
        self.ell = np.zeros((m, len(grid)))

    def stage(self, row: int, x_c: float, x_b: float, w: float) -> None:
        if x_c + x_b > 0 and 0.0 < w < 1.0:
            self._staged.append((row, x_c, x_b, math.log(w / (1.0 - w))))

    def flush(self) -> None:
        """Add the staged windows: x_c of n events on the canary, share w under 'no change'."""
        if self.grid is None:
            self._build()
        if not self._staged:
            return
        rows, x_c, x_b, logit_w = (np.asarray(v) for v in zip(*self._staged, strict=True))
        self._staged.clear()
        z = self.grid[None, :] + logit_w[:, None]
        # log pi = -log(1 + e^-z) and log(1 - pi) = log pi - z
        np.subtract.at(self.ell, rows, (x_c + x_b)[:, None] * np.logaddexp(0.0, -z) + x_b[:, None] * z)
        self._version += 1

    def mixtures(self, phis: tuple[float, ...]) -> np.ndarray:
        """log of every prior's mixture of exp(ell / phi): shape (metrics, 5); cached."""
        if self.grid is None:
            self._build()
        if self._cache is not None and self._cache[0] == self._version and self._cache[1] == phis:
            return self._cache[2]
        ell = self.ell / np.asarray(phis)[:, None]
        v = self.priors + ell[:, None, :]
        m = ell.max(axis=1)[:, None]
        with np.errstate(divide="ignore"):
            mix = m + np.log(np.exp(v - m[..., None]).sum(axis=2))
        self._cache = (self._version, phis, mix)
        return mix


class ConcurrentCountTest:
    """Conditional binomial test of canary vs concurrent baseline counts (one row of a CountBank)."""

    def __init__(self, sides: Sides, bank: CountBank | None = None) -> None:
        self.sides = sides
        self.bank = bank if bank is not None else CountBank()
        self.row = self.bank.register(sides)
        self._own_bank = bank is None
        self.x_canary = 0.0
        self.x_baseline = 0.0
        self.exposure_canary = 0.0
        self.exposure_baseline = 0.0
        self.windows = 0
        self.pearson_canary = Pearson()
        self.pearson_baseline = Pearson()

    def add_history(self, k: float, exposure: float) -> None:
        """Pre-deploy baseline window: only informs the dispersion estimate."""
        self.pearson_baseline.add(k, exposure)

    def add(self, x_c: float, x_b: float, w: float, exposure_c: float, exposure_b: float) -> None:
        """One paired window: x_c canary and x_b baseline events, w the canary share under H0 (r=1).
        With a shared bank the caller flushes it once per window."""
        self.windows += 1
        self.x_canary += x_c
        self.x_baseline += x_b
        self.exposure_canary += exposure_c
        self.exposure_baseline += exposure_b
        self.pearson_canary.add(x_c, exposure_c)
        self.pearson_baseline.add(x_b, exposure_b)
        self.bank.stage(self.row, x_c, x_b, w)
        if self._own_bank:
            self.bank.flush()

    def dispersion(self) -> float:
        return dispersion(self.pearson_canary, self.pearson_baseline)

    def evaluate(
        self, alpha: float, phis: tuple[float, ...] | None = None, *, interval: bool = True
    ) -> CountResult:
        """``phis``: every bank row's dispersion, when the caller evaluates the whole bank at once."""
        phi = self.dispersion()
        bank = self.bank
        mix = bank.mixtures(phis if phis is not None else (phi,))[self.row]
        ell = bank.ell[self.row] / phi
        fails = [float(mix[j] - ell[i]) for j, i in enumerate(bank.fail_idx[self.row])]
        passes = [float(mix[2 + j] - ell[i]) for j, i in enumerate(bank.pass_idx[self.row])]
        # 'either': the two FAIL sides at alpha/2 each (their average); PASS needs both sides
        log_e_fail = fails[0] if len(fails) == 1 else float(np.logaddexp(fails[0], fails[1]) - math.log(2))
        lo = hi = None
        if interval:
            lo, hi = _interval(bank.grid, ell, float(mix[4]), math.log(1.0 / alpha))
        est = None
        if self.exposure_canary > 0 and self.exposure_baseline > 0 and self.x_baseline > 0:
            est = (self.x_canary / self.exposure_canary) / (self.x_baseline / self.exposure_baseline)
        return CountResult(log_e_fail, min(passes), lo, hi, est, phi)


def _interval(
    grid: np.ndarray, ell: np.ndarray, log_mix_two: float, log_threshold: float
) -> tuple[float | None, float | None]:
    """Confidence sequence: every ratio whose point-null e-value is below the threshold."""
    inside = np.flatnonzero(ell > log_mix_two - log_threshold)
    if len(inside) == 0:
        return None, None
    lo_i, hi_i = int(inside[0]), int(inside[-1])
    lo = 0.0 if lo_i == 0 else math.exp(grid[lo_i])
    hi = math.inf if hi_i == len(grid) - 1 else math.exp(grid[hi_i])
    return lo, hi


def poisson_rate_bounds(k: float, exposure: float, alpha: float) -> tuple[float, float]:
    """Exact (Garwood) one-sided bounds of a Poisson rate, each with error alpha."""
    lo = 0.0 if k <= 0 else chi2.ppf(alpha, 2 * k) / 2.0 / exposure
    hi = chi2.ppf(1.0 - alpha, 2 * k + 2) / 2.0 / exposure
    return float(lo), float(hi)


class PrePostCountTest(_GridTests):
    """Canary counts after the deploy against the pre-deploy window's rate (no concurrent baseline)."""

    def __init__(self, sides: Sides) -> None:
        super().__init__(sides)
        self.x_baseline = 0.0
        self.exposure_baseline = 0.0
        self.x_canary = 0.0
        self.exposure_canary = 0.0
        self.windows = 0
        self.pearson_canary = Pearson()
        self.pearson_baseline = Pearson()
        self._theta_exp = np.exp(self.grid)

    def add_history(self, k: float, exposure: float) -> None:
        self.x_baseline += k
        self.exposure_baseline += exposure
        self.pearson_baseline.add(k, exposure)

    def add(self, x_c: float, exposure_c: float) -> None:
        self.windows += 1
        self.x_canary += x_c
        self.exposure_canary += exposure_c
        self.pearson_canary.add(x_c, exposure_c)

    def _ell(self, rate: float) -> np.ndarray:
        return self.x_canary * self.grid - self.exposure_canary * rate * self._theta_exp

    def evaluate(self, alpha: float, pass_alpha: float) -> CountResult:
        phi = dispersion(self.pearson_canary, self.pearson_baseline)
        if self.exposure_baseline <= 0:
            return CountResult(0.0, 0.0, None, None, None, phi)
        # Half of each alpha goes to bounding the pre-deploy rate, half to the sequential test.
        f_lo, f_hi = poisson_rate_bounds(self.x_baseline, self.exposure_baseline, alpha / 2)
        p_lo, p_hi = poisson_rate_bounds(self.x_baseline, self.exposure_baseline, pass_alpha / 2)
        harmful_up = self.sides.direction is not Direction.DECREASE
        # FAIL: the baseline rate least favourable to failing; PASS: least favourable to passing
        ell_fail = self._ell(f_hi if harmful_up else f_lo) / phi
        ell_pass = self._ell(p_lo if harmful_up else p_hi) / phi
        if self.sides.direction is Direction.EITHER:  # each side against its own worst-case rate
            up_fail, up_pass = self._sides(ell_fail, ell_pass)
            down_fail, down_pass = self._sides(self._ell(f_lo) / phi, self._ell(p_hi) / phi)
            e_fail = float(np.logaddexp(up_fail[0], down_fail[1]) - math.log(2))
            e_pass = min(up_pass[0], down_pass[1])
        else:
            e_fail, e_pass = self._tests(ell_fail, ell_pass)
        log_thr = math.log(2.0 / alpha)
        lo, _ = self._cs(self._ell(f_hi) / phi, log_thr)
        _, hi = self._cs(self._ell(f_lo) / phi, log_thr)
        est = None
        if self.exposure_canary > 0 and self.x_baseline > 0:
            est = (self.x_canary / self.exposure_canary) / (self.x_baseline / self.exposure_baseline)
        # the e-values are halved: the other half of each alpha bounds the pre-deploy rate
        return CountResult(e_fail - math.log(2), e_pass - math.log(2), lo, hi, est, phi)
