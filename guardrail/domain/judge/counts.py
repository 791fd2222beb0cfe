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

Overdispersion: real errors come in bursts. The log-likelihood is tempered by a dispersion phi >= 1
(quasi-likelihood, l / phi), from the Pearson statistic of each track's windows against its own
pooled rate. The guarantee must hold from the first look, before the data can tell bursts from
binomial noise, so the baseline's dispersion is a conservative prior until its windows (pre-deploy
history included) give enough degrees of freedom, and the canary's is shrunk towards the baseline's
(same service, same error process; the canary's few events per window make its own estimate noisy).
The conditional test's dispersion weighs the two by where the events are: mostly the canary's at a
10% canary share, so a one-instance canary's bursts are not averaged away by a smooth baseline.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.stats import chi2

from guardrail.domain.model import Direction

# theta = log(rate ratio) from 0.05x to 20x. Fixed points (allowed / critical change) are inserted.
_BASE_GRID = np.round(np.arange(-3.0, 3.0 + 1e-9, 0.04), 10)
PRIOR_SCALE = 0.5  # Rayleigh prior on the distance from the null, in log-ratio units (tuned in bench/)
DISPERSION_NOISE_SD = 1.5
# Dispersion before the data can tell bursts from binomial noise (tuned in bench/: bursts of mean 4
# give about 7; 4 keeps every A/A scenario within alpha from the first look at no cost in detection
# once a pre-deploy window gives the baseline's estimate).
PRIOR_DISPERSION = 4.0
MIN_DISPERSION_DF = 8  # baseline degrees of freedom before its own estimate replaces the prior
CANARY_PRIOR_DF = 8.0  # weight of the baseline's estimate in the canary's, in degrees of freedom


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
    grid: np.ndarray, theta0: float, harmful_up: bool, scale: float | None = None
) -> np.ndarray:
    """Log weights of a Rayleigh prior on the distance from theta0 towards one side, normalised."""
    scale = PRIOR_SCALE if scale is None else scale
    delta = (grid - theta0) if harmful_up else (theta0 - grid)
    with np.errstate(divide="ignore"):
        lp = np.where(delta > 1e-12, np.log(np.maximum(delta, 1e-300)) - 0.5 * (delta / scale) ** 2, -np.inf)
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


def _data_dispersion(stat: float, df: int) -> float:
    """The Pearson statistic per degree of freedom less a noise allowance of ``DISPERSION_NOISE_SD``
    standard deviations (for binomial counts it scatters around 1 with sd sqrt(2 / df)), floored at
    1: binomial traffic keeps phi = 1 and pays nothing, bursts (phi of 5 or more) are tempered."""
    return float(min(max(1.0, stat / df - DISPERSION_NOISE_SD * math.sqrt(2.0 / df)), 100.0))


def baseline_dispersion(acc: Pearson) -> float:
    """The baseline's dispersion: the conservative prior until its windows (pre-deploy history
    included) give ``MIN_DISPERSION_DF`` degrees of freedom, then its own estimate."""
    stat, df = acc.statistic()
    return PRIOR_DISPERSION if df < MIN_DISPERSION_DF else _data_dispersion(stat, df)


def canary_dispersion(acc: Pearson, prior: float) -> float:
    """The canary's dispersion: its own estimate shrunk towards the baseline's (``prior``) with a
    weight of ``CANARY_PRIOR_DF`` degrees of freedom. A canary has few events per window, so its own
    estimate is noisy for long; the same service's baseline is the natural prior, and a canary that
    is burstier than the baseline (one instance against many) pulls away from it as windows come."""
    stat, df = acc.statistic()
    if df <= 0:
        return prior
    return (CANARY_PRIOR_DF * prior + df * _data_dispersion(stat, df)) / (CANARY_PRIOR_DF + df)


def dispersion(canary: Pearson, baseline: Pearson, canary_share: float) -> float:
    """phi of the conditional test of x_canary given the window total: for independent tracks with
    dispersions phi_c and phi_b it is (1 - pi) * phi_c + pi * phi_b, pi the canary's share of the
    events, so a one-instance canary's bursts count for what they are and are not averaged away by
    a smooth baseline."""
    phi_b = baseline_dispersion(baseline)
    phi_c = canary_dispersion(canary, phi_b)
    pi = min(max(canary_share, 0.0), 1.0)
    return max(1.0, (1.0 - pi) * phi_c + pi * phi_b)


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


class Priors:
    """Every one-sided test on one grid, as two matrices of log prior weights (row k = null theta_k).

    ``up[k]`` mixes the alternatives above theta_k (tests "theta <= theta_k"), ``down[k]`` those below.
    The FAIL and PASS tests are rows of these, and inverting them row by row gives the confidence
    sequence reported with the verdict, so the interval and the decision always agree.
    """

    _cache: dict[bytes, Priors] = {}  # noqa: RUF012 - grids are few and immutable: share their priors

    @classmethod
    def for_grid(cls, grid: np.ndarray) -> Priors:
        key = grid.tobytes()
        p = cls._cache.get(key)
        if p is None:
            p = cls._cache[key] = cls(grid)
        return p

    def __init__(self, grid: np.ndarray) -> None:
        self.grid = grid
        self.up = np.vstack(
            [
                one_sided_log_prior(grid, t, True) if k < len(grid) - 1 else np.full(len(grid), -np.inf)
                for k, t in enumerate(grid)
            ]
        )
        self.down = np.vstack(
            [
                one_sided_log_prior(grid, t, False) if k > 0 else np.full(len(grid), -np.inf)
                for k, t in enumerate(grid)
            ]
        )

    @staticmethod
    def log_e(rows: np.ndarray, ell: np.ndarray) -> np.ndarray:
        """log e-value of every row's test given the log-likelihood ``ell`` on the grid."""
        v = rows + ell
        m = ell.max()
        with np.errstate(divide="ignore"):
            return m + np.log(np.exp(v - m).sum(axis=-1)) - ell

    def row(self, theta: float, harmful_up: bool) -> np.ndarray:
        return (self.up if harmful_up else self.down)[grid_index(self.grid, theta)]

    def bounds(
        self, ell_low: np.ndarray, ell_high: np.ndarray, log_thr_low: float, log_thr_high: float
    ) -> tuple[float, float]:
        """(lower, upper) ratio bounds: the ratios no one-sided test rejects at the given thresholds,
        interpolated between grid points where the e-value crosses the threshold."""
        g = self.grid
        e_up = self.log_e(self.up, ell_low) - log_thr_low  # < 0: not rejected
        e_down = self.log_e(self.down, ell_high) - log_thr_high
        keep_low = np.flatnonzero(e_up < 0)
        keep_high = np.flatnonzero(e_down < 0)
        if len(keep_low) == 0:
            lo = math.exp(g[-1])
        elif keep_low[0] == 0:
            lo = 0.0
        else:
            lo = math.exp(_cross(g, e_up, keep_low[0] - 1, keep_low[0]))
        if len(keep_high) == 0:
            hi = math.exp(g[0])
        elif keep_high[-1] == len(g) - 1:
            hi = math.inf
        else:
            hi = math.exp(_cross(g, e_down, keep_high[-1], keep_high[-1] + 1))
        return lo, hi


def _cross(g: np.ndarray, e: np.ndarray, i: int, j: int) -> float:
    """theta where e crosses 0 between grid points i and j (linear in theta)."""
    ei, ej = float(e[i]), float(e[j])
    if not (math.isfinite(ei) and math.isfinite(ej)) or ei == ej:
        return float(g[j])
    return float(g[i] + (g[j] - g[i]) * ei / (ei - ej))


@dataclass(frozen=True, slots=True)
class CountResult:
    log_e_fail: float
    log_e_pass: float
    ci_low: float | None  # ratio
    ci_high: float | None
    estimate: float | None
    dispersion: float
    confidence: float = 0.0  # coverage of [ci_low, ci_high]


def interval_levels(sides: Sides, alpha: float, pass_alpha: float) -> tuple[float, float, float]:
    """(alpha of the lower bound, alpha of the upper bound, coverage) so that FAIL <=> the bound on the
    harmful side clears the allowed change and PASS <=> the other bound clears the critical change."""
    if sides.direction is Direction.INCREASE:
        return alpha, pass_alpha, 1 - alpha - pass_alpha
    if sides.direction is Direction.DECREASE:
        return pass_alpha, alpha, 1 - alpha - pass_alpha
    return alpha / 2, alpha / 2, 1 - alpha


class CountBank:
    """The log-likelihood grids of every concurrent count metric of one judge, as one matrix.

    A judge evaluation is then a handful of vectorised operations whatever the number of metrics
    (the per-look cost matters when thousands of deploys are replayed, as in bench/).
    """

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
        self.priors = Priors.for_grid(grid)
        m = len(self._sides)
        # rows 0-1: FAIL sides, 2-3: PASS sides (unused rows stay -inf)
        rows = np.full((m, 4, len(grid)), -np.inf)
        self.fail_idx: list[list[int]] = []
        self.pass_idx: list[list[int]] = []
        for r, sides in enumerate(self._sides):
            for j, (t0, up) in enumerate(sides.fail_nulls()):
                rows[r, j] = self.priors.row(t0, up)
            for j, (tc, up) in enumerate(sides.pass_nulls()):
                rows[r, 2 + j] = self.priors.row(tc, not up)
            self.fail_idx.append([grid_index(grid, t0) for t0, _ in sides.fail_nulls()])
            self.pass_idx.append([grid_index(grid, tc) for tc, _ in sides.pass_nulls()])
        self.grid = grid
        self.test_rows = rows
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
        delta = (x_c + x_b)[:, None] * np.logaddexp(0.0, -z) + x_b[:, None] * z
        if len(set(rows.tolist())) == len(rows):
            self.ell[rows] -= delta
        else:  # a row staged twice before a flush
            np.subtract.at(self.ell, rows, delta)
        self._version += 1

    def mixtures(self, phis: tuple[float, ...]) -> np.ndarray:
        """log of every test row's mixture of exp(ell / phi): shape (metrics, 4); cached."""
        if self.grid is None:
            self._build()
        if self._cache is not None and self._cache[0] == self._version and self._cache[1] == phis:
            return self._cache[2]
        ell = self.ell / np.asarray(phis)[:, None]
        v = self.test_rows + ell[:, None, :]
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
        self._share_hint = 0.1  # canary share of events before any is seen (only weighs the priors)

    def add_history(self, k: float, exposure: float) -> None:
        """Pre-deploy baseline window: only informs the dispersion estimate."""
        self.pearson_baseline.add(k, exposure)

    def add(self, x_c: float, x_b: float, w: float, exposure_c: float, exposure_b: float) -> None:
        """One paired window: x_c canary and x_b baseline events, w the canary share under H0 (r=1).
        With a shared bank the caller flushes it once per window."""
        if self.x_canary + self.x_baseline <= 0:
            self._share_hint = w
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
        """The dispersion the next window will be tempered with."""
        total = self.x_canary + self.x_baseline
        share = self.x_canary / total if total > 0 else self._share_hint
        return dispersion(self.pearson_canary, self.pearson_baseline, share)

    def evaluate(
        self, alpha: float, pass_alpha: float, phis: tuple[float, ...] | None = None, *, interval: bool = True
    ) -> CountResult:
        """``phis``: every bank row's dispersion, when the caller evaluates the whole bank at once."""
        phi = phis[self.row] if phis is not None else self.dispersion()
        bank = self.bank
        mix = bank.mixtures(phis if phis is not None else (phi,))[self.row]
        ell = bank.ell[self.row] / phi
        fails = [float(mix[j] - ell[i]) for j, i in enumerate(bank.fail_idx[self.row])]
        passes = [float(mix[2 + j] - ell[i]) for j, i in enumerate(bank.pass_idx[self.row])]
        lo = hi = None
        a_lo, a_hi, level = interval_levels(self.sides, alpha, pass_alpha)
        if interval:
            lo, hi = bank.priors.bounds(ell, ell, math.log(1 / a_lo), math.log(1 / a_hi))
        est = None
        if self.exposure_canary > 0 and self.exposure_baseline > 0 and self.x_baseline > 0:
            est = (self.x_canary / self.exposure_canary) / (self.x_baseline / self.exposure_baseline)
        return CountResult(_combine_fail(fails), min(passes), lo, hi, est, phi, level)


class SilenceTest:
    """Anytime-valid test that a canary stopped serving: windows in which it got no request while
    it was given a share of the traffic and the baseline served.

    The share test above compares the canary's share over the whole deploy, so a canary that served
    well for ten minutes and then crashed is caught only once the average has dropped, minutes later.
    Here, under H0 (the canary gets at least r0 of its share, binomial thinning tempered by the
    dispersion phi), a window with no canary request out of n has probability at most
    p = (1 - pi0)^(n / phi). For every window s, the product from s on of 1{no canary request} / p
    is a nonnegative supermartingale under H0 (it dies at the first window the canary serves), and
    so is their average with weights 1 / (s (s + 1)): by Ville's inequality the chance that it ever
    reaches 1/alpha is at most alpha, however late the crash comes. Only windows after the canary
    first served count (a canary that never served fails the share test); ``phi`` is the share test's
    dispersion from the windows before (a collapse must not temper its own evidence).
    """

    def __init__(self, r0: float) -> None:
        self.r0 = r0
        self.index = 0  # windows seen since the canary first served
        self.log_e = -math.inf  # log of the weighted sum over the start times still alive
        self.silent = 0  # current run of windows without a canary request
        self.silent_since: float | None = None  # data time the current run began

    def add(self, x_c: float, x_b: float, w: float, phi: float, at: float) -> None:
        if not 0.0 < w < 1.0 or x_c + x_b <= 0:
            return  # no share given, or nobody served: no information either way
        if x_c > 0:
            self.index += 1
            self.log_e, self.silent, self.silent_since = -math.inf, 0, None
            return
        if self.index == 0:
            return  # never served yet
        self.index += 1
        s = self.index
        pi0 = self.r0 * w / (self.r0 * w + 1.0 - w)
        log_p = (x_b / max(phi, 1.0)) * math.log1p(-pi0)
        self.log_e = float(np.logaddexp(self.log_e, -math.log(s) - math.log(s + 1))) - log_p
        if self.silent == 0:
            self.silent_since = at
        self.silent += 1


def _combine_fail(fails: list[float]) -> float:
    """'either' runs its two FAIL sides at alpha/2 each, i.e. compares their average with 1/alpha."""
    return fails[0] if len(fails) == 1 else float(np.logaddexp(fails[0], fails[1]) - math.log(2))


def poisson_rate_bounds(k: float, exposure: float, alpha: float) -> tuple[float, float]:
    """Exact (Garwood) one-sided bounds of a Poisson rate, each with error alpha."""
    lo = 0.0 if k <= 0 else chi2.ppf(alpha, 2 * k) / 2.0 / exposure
    hi = chi2.ppf(1.0 - alpha, 2 * k + 2) / 2.0 / exposure
    return float(lo), float(hi)


class PrePostCountTest:
    """Canary counts after the deploy against the pre-deploy window's rate (no concurrent baseline).

    Half of each alpha bounds the pre-deploy rate (exact Poisson bound), half goes to the sequential
    test, which uses the bound least favourable to its own decision; its e-values are reported
    halved so that they compare with 1/alpha like every other metric's.
    """

    def __init__(self, sides: Sides) -> None:
        self.sides = sides
        self.grid = make_grid(sides.points())
        self.priors = Priors.for_grid(self.grid)
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

    def dispersion(self) -> float:
        """Only the canary's windows are counted after the deploy: its own dispersion, with the
        pre-deploy window's as the prior."""
        return max(1.0, canary_dispersion(self.pearson_canary, baseline_dispersion(self.pearson_baseline)))

    def _ell(self, rate: float, phi: float) -> np.ndarray:
        return (self.x_canary * self.grid - self.exposure_canary * rate * self._theta_exp) / phi

    def _log_e(self, theta: float, up: bool, ell: np.ndarray) -> float:
        i = grid_index(self.grid, theta)
        return logsumexp(self.priors.row(theta, up) + ell) - float(ell[i])

    def evaluate(self, alpha: float, pass_alpha: float) -> CountResult:
        phi = self.dispersion()
        if self.exposure_baseline <= 0:
            return CountResult(0.0, 0.0, None, None, None, phi)
        rate_lo_f, rate_hi_f = poisson_rate_bounds(self.x_baseline, self.exposure_baseline, alpha / 2)
        rate_lo_p, rate_hi_p = poisson_rate_bounds(self.x_baseline, self.exposure_baseline, pass_alpha / 2)
        # An increase is judged against the highest plausible baseline rate, a decrease the lowest.
        fails = [
            self._log_e(t0, up, self._ell(rate_hi_f if up else rate_lo_f, phi))
            for t0, up in self.sides.fail_nulls()
        ]
        passes = [
            self._log_e(tc, not up, self._ell(rate_lo_p if up else rate_hi_p, phi))
            for tc, up in self.sides.pass_nulls()
        ]
        a_lo, a_hi, level = interval_levels(self.sides, alpha, pass_alpha)
        # the lower ratio bound assumes the highest baseline rate, the upper bound the lowest
        _, hi_rate = poisson_rate_bounds(self.x_baseline, self.exposure_baseline, a_lo / 2)
        lo_rate, _ = poisson_rate_bounds(self.x_baseline, self.exposure_baseline, a_hi / 2)
        lo, hi = self.priors.bounds(
            self._ell(hi_rate, phi), self._ell(lo_rate, phi), math.log(2 / a_lo), math.log(2 / a_hi)
        )
        est = None
        if self.exposure_canary > 0 and self.x_baseline > 0:
            est = (self.x_canary / self.exposure_canary) / (self.x_baseline / self.exposure_baseline)
        ln2 = math.log(2)
        return CountResult(_combine_fail(fails) - ln2, min(passes) - ln2, lo, hi, est, phi, level)
