"""The Judge: pairs canary and baseline windows, runs every metric's tests, decides and explains.

Decision rule at each evaluation (data time):
- FAIL as soon as a critical metric's FAIL e-value reaches 1/alpha_m (alpha_m is the metric's share
  of the deploy-level alpha, so the deploy's false-rollback chance is <= alpha however often we look).
  A FAIL is final.
- PASS when every metric passes its non-inferiority test (a metric with no data passes only if it
  is not ``must_have_data``); a failing non-critical metric blocks PASS but does not fail the deploy.
- INCONCLUSIVE at the end of the analysis window, with what more data would be needed. The window
  (``max_duration_s``) is each step's: it runs from the step taking effect (``mark_step``), so a step
  that starts late still gets a full window; evidence itself accumulates over the whole deploy.
- CONTINUE otherwise. No decision of any kind before ``min_canary_requests`` canary requests.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Sequence
from dataclasses import replace

import numpy as np

from guardrail.domain.errors import ValidationError
from guardrail.domain.judge import explain
from guardrail.domain.judge.counts import (
    ConcurrentCountTest,
    CountBank,
    CountResult,
    PrePostCountTest,
    Sides,
    SilenceTest,
)
from guardrail.domain.judge.gauges import SignTest
from guardrail.domain.judge.planning import Outlook, plan
from guardrail.domain.judge.quantiles import LogSketch, always_valid_p, quantile_bounds
from guardrail.domain.judge.spec import AnalysisSpec, BaselineMode, MetricKind, MetricSpec
from guardrail.domain.model import (
    Decision,
    Direction,
    Evidence,
    Histogram,
    MetricStatus,
    Sample,
    Track,
    Verdict,
)

_PRE_POST_NOTE = (
    "compared with the pre-deploy window (no concurrent baseline): weaker evidence, since a change in "
    "traffic or time of day looks the same as a regression"
)


def _histogram_quantile(bounds: tuple[float, ...], counts: Sequence[float], q: float) -> float | None:
    """Prometheus-style quantile: linear interpolation inside the bucket holding rank q."""
    total = sum(counts)
    if total <= 0:
        return None
    rank = q * total
    cum = 0.0
    for i, c in enumerate(counts):
        if cum + c >= rank and c > 0:
            if i >= len(bounds):
                return bounds[-1]  # in the +Inf bucket: like histogram_quantile, the highest bound
            lower = 0.0 if i == 0 else bounds[i - 1]
            return lower + (bounds[i] - lower) * (rank - cum) / c
        cum += c
    return bounds[-1]


class _Metric:
    """One metric's state: fed windows, answers with Evidence."""

    def __init__(self, spec: MetricSpec, analysis: AnalysisSpec, mode: BaselineMode, bank: CountBank) -> None:
        self.spec = spec
        self.mode = mode
        self.alpha = analysis.metric_alpha(spec)
        self.pass_alpha = analysis.metric_pass_alpha(spec)
        self.sides = Sides(spec.direction, spec.allowed_change, spec.critical_change)
        self.harmful_up = spec.direction is not Direction.DECREASE

    def history(self, b: Sample) -> None:  # pragma: no cover - overridden where history matters
        return None

    def observe(self, c: Sample, b: Sample | None, weight: float) -> None:
        raise NotImplementedError

    def canary_n(self) -> float:
        raise NotImplementedError

    def evidence(self, decisions_allowed: bool) -> Evidence:
        raise NotImplementedError

    def status(self, decisions_allowed: bool) -> MetricStatus:
        """The status alone; metrics with a cheaper path than building the evidence override it."""
        return self.evidence(decisions_allowed).status

    def power(self, canary_rate_per_s: float | None) -> str | None:
        return None

    # shared by count-based metrics ------------------------------------------------------------
    def _status(self, log_e_fail: float, log_e_pass: float, has_data: bool, allowed: bool) -> MetricStatus:
        if not has_data:
            return MetricStatus.NO_DATA
        if not allowed or self.canary_n() < self.spec.min_samples:
            return MetricStatus.CONTINUE
        if log_e_fail >= math.log(1 / self.alpha):
            return MetricStatus.FAIL
        if log_e_pass >= math.log(1 / self.pass_alpha):
            return MetricStatus.PASS
        return MetricStatus.CONTINUE

    def _evidence(
        self,
        status: MetricStatus,
        r: CountResult | None,
        cn: float,
        bn: float,
        detail: str,
        cv: float | None = None,
        bv: float | None = None,
        e_fail: float = 0.0,
        e_pass: float = 0.0,
    ) -> Evidence:
        if r is not None:
            e_fail, e_pass = r.log_e_fail, r.log_e_pass
        return Evidence(
            metric=self.spec.name,
            kind=self.spec.kind.value,
            status=status,
            critical=self.spec.critical,
            estimate=r.estimate if r else None,
            ci_low=r.ci_low if r else None,
            ci_high=r.ci_high if r else None,
            confidence=r.confidence if r and r.confidence else 1 - self.alpha,
            e_value_fail=math.exp(min(e_fail, 700)),
            e_value_pass=math.exp(min(e_pass, 700)),
            canary_n=cn,
            baseline_n=bn,
            allowed=self._ratio(self.spec.allowed_change),
            critical_change=self._ratio(self.spec.critical_change),
            detail=detail,
            canary_value=cv,
            baseline_value=bv,
            dispersion=r.dispersion if r else 1.0,
        )

    def _ratio(self, change: float) -> float:
        return 1 + change if self.harmful_up else 1 - change


class _CountMetric(_Metric):
    """Errors, throughput, counter ratios and latency exceedances all reduce to counts."""

    def __init__(self, spec: MetricSpec, analysis: AnalysisSpec, mode: BaselineMode, bank: CountBank) -> None:
        super().__init__(spec, analysis, mode, bank)
        self.test: ConcurrentCountTest | PrePostCountTest = (
            PrePostCountTest(self.sides)
            if mode is BaselineMode.PRE_POST
            else ConcurrentCountTest(self.sides, bank)
        )
        self._result: CountResult | None = None
        self.phis: tuple[float, ...] | None = None  # every bank row's dispersion, set by the judge

    def _add(self, x_c: float, e_c: float, x_b: float, e_b: float, w: float | None = None) -> None:
        if isinstance(self.test, PrePostCountTest):
            self.test.add(x_c, e_c)
        else:
            share = w if w is not None else (e_c / (e_c + e_b) if e_c + e_b > 0 else 0.0)
            self.test.add(x_c, x_b, share, e_c, e_b)

    def canary_n(self) -> float:
        return self.test.exposure_canary

    def has_data(self) -> bool:
        t = self.test
        return t.exposure_canary > 0 and t.exposure_baseline > 0

    def result(self, interval: bool = True) -> CountResult:
        t = self.test
        if isinstance(t, PrePostCountTest):
            return t.evaluate(self.alpha, self.pass_alpha)
        return t.evaluate(self.alpha, self.pass_alpha, self.phis, interval=interval)

    def status(self, decisions_allowed: bool) -> MetricStatus:
        if not self.has_data():
            return MetricStatus.NO_DATA
        r = self.result(interval=False)
        return self._status(r.log_e_fail, r.log_e_pass, True, decisions_allowed)

    def rates(self) -> tuple[float | None, float | None]:
        t = self.test
        c = t.x_canary / t.exposure_canary if t.exposure_canary > 0 else None
        b = t.x_baseline / t.exposure_baseline if t.exposure_baseline > 0 else None
        return c, b

    def power(self, canary_rate_per_s: float | None) -> str | None:
        t = self.test
        r = self._result
        return explain.power_sentence(
            self.spec.name,
            estimate=r.estimate if r else None,
            critical_ratio=self._ratio(self.spec.critical_change),
            canary_events=t.x_canary,
            baseline_events=t.x_baseline,
            canary_exposure=t.exposure_canary,
            canary_rate_per_s=canary_rate_per_s,
            log_threshold=math.log(1 / self.pass_alpha),
            dispersion=r.dispersion if r else 1.0,
            ci_high=r.ci_high if r else None,
        )

    def evidence(self, decisions_allowed: bool) -> Evidence:
        if not self.has_data():
            return self._evidence(
                MetricStatus.NO_DATA,
                None,
                self.canary_n(),
                self.test.exposure_baseline,
                self._no_data_detail(),
            )
        r = self.result()
        self._result = r
        status = self._status(r.log_e_fail, r.log_e_pass, True, decisions_allowed)
        cv, bv = self.rates()
        return self._evidence(
            status, r, self.canary_n(), self.test.exposure_baseline, self._detail(r, status, cv, bv), cv, bv
        )

    def _no_data_detail(self) -> str:
        return f"no {self.spec.name} data from {'the canary' if self.test.exposure_canary <= 0 else 'the baseline'} yet: holding"

    def _tail(self, r: CountResult, status: MetricStatus) -> str:
        est = explain.ratio(r.estimate)
        cs = explain.interval(r.ci_low, r.ci_high, r.confidence)
        word = explain.status_word(status, self.spec.critical_change, self.harmful_up)
        disp = f", dispersion x{r.dispersion:.1f}" if r.dispersion > 1.05 else ""
        return f"(ratio {est}, {cs}{disp}) after {self.canary_n():,.0f} canary requests: {word}"

    def _detail(self, r: CountResult, status: MetricStatus, cv: float | None, bv: float | None) -> str:
        raise NotImplementedError


class _ErrorMetric(_CountMetric):
    def history(self, b: Sample) -> None:
        self.test.add_history(b.errors, b.requests)

    def observe(self, c: Sample, b: Sample | None, weight: float) -> None:
        self._add(c.errors, c.requests, b.errors if b else 0, b.requests if b else 0)

    def _detail(self, r: CountResult, status: MetricStatus, cv: float | None, bv: float | None) -> str:
        return f"canary error rate {explain.pct(cv)} vs baseline {explain.pct(bv)} {self._tail(r, status)}"


class _CounterRatioMetric(_CountMetric):
    def _counts(self, s: Sample) -> tuple[float, float] | None:
        num = s.gauges.get(self.spec.numerator or "")
        den = s.requests if self.spec.denominator == "requests" else s.gauges.get(self.spec.denominator or "")
        if num is None or den is None:
            return None
        return float(num), float(den)

    def history(self, b: Sample) -> None:
        got = self._counts(b)
        if got:
            self.test.add_history(*got)

    def observe(self, c: Sample, b: Sample | None, weight: float) -> None:
        cc = self._counts(c)
        bb = self._counts(b) if b else (0.0, 0.0)
        if cc is None or bb is None:
            return
        self._add(cc[0], cc[1], bb[0], bb[1])

    def _detail(self, r: CountResult, status: MetricStatus, cv: float | None, bv: float | None) -> str:
        return (
            f"canary {self.spec.numerator}/{self.spec.denominator} {explain.pct(cv)} vs baseline "
            f"{explain.pct(bv)} {self._tail(r, status)}"
        )


class _ThroughputMetric(_CountMetric):
    """Canary share of requests against the share it was given (concurrent mode only), and a canary
    that stopped serving altogether (:class:`SilenceTest`); the metric's FAIL e-value is a weighted
    average of the two tests' e-values (``SILENCE_WEIGHT`` on the silence test: an average of
    e-values is one), so together they keep the metric's alpha. A single silent window of a canary
    given hundreds of requests is overwhelming evidence, so the silence test needs little weight.

    Its evidence is about requests the canary did *not* get, so the judge's minimum of canary
    requests gates it on the requests the canary was given, not on those it served: a canary that
    serves nothing must still fail."""

    def __init__(self, spec: MetricSpec, analysis: AnalysisSpec, mode: BaselineMode, bank: CountBank) -> None:
        super().__init__(spec, analysis, mode, bank)
        self.requests_total = 0.0
        self.assigned = 0.0
        self.min_assigned = analysis.min_canary_requests
        self.silence = SilenceTest(1.0 - spec.allowed_change)

    def observe(self, c: Sample, b: Sample | None, weight: float) -> None:
        if b is None or not 0 < weight < 1:
            return
        n = c.requests + b.requests
        self.requests_total += n
        self.assigned += n * weight
        self.silence.add(c.requests, b.requests, weight, self.test.dispersion(), c.start)
        self.test.add(c.requests, b.requests, weight, n * weight, n * (1 - weight))  # type: ignore[call-arg]

    SILENCE_WEIGHT = 0.1

    def result(self, interval: bool = True) -> CountResult:
        r = super().result(interval)
        w = self.SILENCE_WEIGHT
        both = float(np.logaddexp(r.log_e_fail + math.log1p(-w), self.silence.log_e + math.log(w)))
        return replace(r, log_e_fail=both)

    def _status(self, log_e_fail: float, log_e_pass: float, has_data: bool, allowed: bool) -> MetricStatus:
        if has_data and self.assigned >= self.min_assigned and log_e_fail >= math.log(1 / self.alpha):
            return MetricStatus.FAIL
        return super()._status(log_e_fail, log_e_pass, has_data, allowed)

    def has_data(self) -> bool:
        return self.assigned > 0

    def canary_n(self) -> float:
        return self.test.x_canary

    def rates(self) -> tuple[float | None, float | None]:
        if self.requests_total <= 0:
            return None, None
        return self.test.x_canary / self.requests_total, self.assigned / self.requests_total

    def _detail(self, r: CountResult, status: MetricStatus, cv: float | None, bv: float | None) -> str:
        if self.silence.silent and self.silence.silent_since is not None:
            return (
                f"canary served no request in its last {self.silence.silent} window(s) while the baseline "
                f"served (stopped serving: crash loop or no ready instance?); overall it served "
                f"{explain.pct(cv)} of requests vs {explain.pct(bv)} it was given {self._tail(r, status)}"
            )
        return (
            f"canary served {explain.pct(cv)} of requests vs {explain.pct(bv)} it was given "
            f"{self._tail(r, status)}"
        )


class _LatencyMetric(_CountMetric):
    """Latency quantile (or fixed threshold) from histograms: exceedance counts above a bucket bound c.

    c is fixed before the canary is judged: the configured threshold, else the bucket bound whose
    baseline exceedance is closest to 1 - q in the pre-deploy window (or, without one, in the first
    baseline windows, which are then left out of the test). Raw latency values without histograms
    go to the sketch path: time-uniform quantile bounds per track.
    """

    MIN_THRESHOLD_REQUESTS = 200

    def __init__(self, spec: MetricSpec, analysis: AnalysisSpec, mode: BaselineMode, bank: CountBank) -> None:
        super().__init__(spec, analysis, mode, bank)
        self.q = spec.quantile if spec.quantile is not None else 0.99
        self.threshold: float | None = spec.threshold_s
        self._bounds: tuple[float, ...] | None = None
        self._pick_counts: list[float] | None = None  # baseline buckets used to choose c
        self._hist = {Track.CANARY: None, Track.BASELINE: None}  # cumulative display histograms
        self._hist_pre: list[float] | None = None
        self.sketch = {Track.CANARY: LogSketch(), Track.BASELINE: LogSketch()}
        self.raw_mode = False
        self.skipped_windows = 0

    # threshold -------------------------------------------------------------------------------
    def _accumulate_pick(self, h: Histogram) -> None:
        if self._bounds is None:
            self._bounds = h.bounds
        if h.bounds != self._bounds:
            return
        if self._pick_counts is None:
            self._pick_counts = [0.0] * len(h.counts)
        for i, v in enumerate(h.counts):
            self._pick_counts[i] += v

    def _try_fix_threshold(self) -> None:
        if self.threshold is not None or self._pick_counts is None or self._bounds is None:
            return
        total = sum(self._pick_counts)
        if total < self.MIN_THRESHOLD_REQUESTS:
            return
        target = 1 - self.q
        best, best_gap = None, math.inf
        above = total
        for i, bound in enumerate(self._bounds):
            above -= self._pick_counts[i]
            if above <= 0:
                break
            gap = abs(math.log((above / total) / target))
            if gap < best_gap:
                best, best_gap = bound, gap
        if best is not None:
            self.threshold = best

    def _add_display(self, track: Track, h: Histogram) -> None:
        cur = self._hist[track]
        if cur is None or cur[0] != h.bounds:
            self._hist[track] = (h.bounds, np.array(h.counts, dtype=float))
            return
        cur[1].__iadd__(h.counts)  # in place: the tuple holds the array

    # feeding --------------------------------------------------------------------------------
    def history(self, b: Sample) -> None:
        if b.latency is not None:
            self._accumulate_pick(b.latency)
            self._try_fix_threshold()
            if self.threshold is not None and self.threshold in b.latency.bounds:
                self.test.add_history(b.latency.count_above(self.threshold), b.latency.total)
            if self.mode is BaselineMode.PRE_POST:
                self._add_display(Track.BASELINE, b.latency)
        elif b.latencies and self.mode is BaselineMode.PRE_POST:
            self.sketch[Track.BASELINE].add_many(b.latencies)

    def observe(self, c: Sample, b: Sample | None, weight: float) -> None:
        if c.latency is None and (b is None or b.latency is None):
            if c.latencies or (b is not None and b.latencies):
                self.raw_mode = True
                self.sketch[Track.CANARY].add_many(c.latencies)
                if b is not None:
                    self.sketch[Track.BASELINE].add_many(b.latencies)
            return
        if self.threshold is None:  # choose c from baseline data; this window is not tested
            if b is not None and b.latency is not None:
                self._accumulate_pick(b.latency)
            self._try_fix_threshold()
            self.skipped_windows += 1
            return
        c_ok = c.latency is not None and self.threshold in c.latency.bounds
        if not c_ok:
            return
        self._add_display(Track.CANARY, c.latency)  # type: ignore[arg-type]
        if self.mode is BaselineMode.PRE_POST:
            self._add(c.latency.count_above(self.threshold), c.latency.total, 0, 0)  # type: ignore[union-attr]
            return
        if b is None or b.latency is None or self.threshold not in b.latency.bounds:
            return
        self._add_display(Track.BASELINE, b.latency)
        self._add(
            c.latency.count_above(self.threshold),
            c.latency.total,  # type: ignore[union-attr]
            b.latency.count_above(self.threshold),
            b.latency.total,
        )

    def _display_quantile(self, track: Track) -> float | None:
        h = self._hist[track]
        return _histogram_quantile(h[0], h[1], self.q) if h else None

    def canary_n(self) -> float:
        if self.raw_mode and self.test.exposure_canary <= 0:
            return float(self.sketch[Track.CANARY].count)
        return self.test.exposure_canary

    def evidence(self, decisions_allowed: bool) -> Evidence:
        if self.raw_mode and self.test.exposure_canary <= 0:
            return self._raw_evidence(decisions_allowed)
        if self.threshold is None:
            return self._evidence(
                MetricStatus.NO_DATA,
                None,
                0,
                0,
                f"{self.spec.name}: no latency histogram from the baseline yet to fix the threshold: holding",
            )
        return super().evidence(decisions_allowed)

    def status(self, decisions_allowed: bool) -> MetricStatus:
        if (self.raw_mode and self.test.exposure_canary <= 0) or self.threshold is None:
            return self.evidence(decisions_allowed).status
        return super().status(decisions_allowed)

    def _detail(self, r: CountResult, status: MetricStatus, cv: float | None, bv: float | None) -> str:
        name = f"p{self.q * 100:g}"
        cq, bq = self._display_quantile(Track.CANARY), self._display_quantile(Track.BASELINE)
        return (
            f"canary {name} {explain.seconds(cq)} vs baseline {explain.seconds(bq)}; slower than "
            f"{explain.seconds(self.threshold)}: {explain.pct(cv)} vs {explain.pct(bv)} {self._tail(r, status)}"
        )

    def _raw_evidence(self, decisions_allowed: bool) -> Evidence:
        sc, sb = self.sketch[Track.CANARY], self.sketch[Track.BASELINE]
        name = f"p{self.q * 100:g}"
        if sc.count == 0 or sb.count == 0:
            return self._evidence(
                MetricStatus.NO_DATA,
                None,
                sc.count,
                sb.count,
                f"no raw {name} latencies from {'the canary' if sc.count == 0 else 'the baseline'} yet: holding",
            )
        c_lo, c_hi = quantile_bounds(sc, self.q, self.alpha / 2)
        b_lo, b_hi = quantile_bounds(sb, self.q, self.alpha / 2)
        allowed, critical = self._ratio(self.spec.allowed_change), self._ratio(self.spec.critical_change)
        p_fail = always_valid_p(sc, sb, self.q, allowed, self.harmful_up)
        pc_lo, pc_hi = quantile_bounds(sc, self.q, self.pass_alpha / 2)
        pb_lo, pb_hi = quantile_bounds(sb, self.q, self.pass_alpha / 2)
        passing = pc_hi < critical * pb_lo if self.harmful_up else pc_lo > critical * pb_hi
        status = MetricStatus.CONTINUE
        if decisions_allowed and sc.count >= self.spec.min_samples:
            if p_fail <= self.alpha:
                status = MetricStatus.FAIL
            elif passing:
                status = MetricStatus.PASS
        cq, bq = sc.quantile(self.q), sb.quantile(self.q)
        lo = c_lo / b_hi if b_hi > 0 and math.isfinite(b_hi) else 0.0
        hi = c_hi / b_lo if b_lo > 0 else math.inf
        r = CountResult(
            math.log(1 / p_fail),
            math.log(1 / self.pass_alpha) if passing else 0.0,
            lo,
            hi,
            cq / bq if bq > 0 else None,
            1.0,
        )
        detail = (
            f"canary {name} {explain.seconds(cq)} (bounds {explain.seconds(c_lo)}-{explain.seconds(c_hi)}) vs "
            f"baseline {explain.seconds(bq)} ({explain.seconds(b_lo)}-{explain.seconds(b_hi)}), ratio "
            f"{explain.interval(lo, hi, 1 - self.alpha)}, from {sc.count:,} raw canary latencies: "
            f"{explain.status_word(status, self.spec.critical_change, self.harmful_up)}"
        )
        return self._evidence(status, r, sc.count, sb.count, detail, cq, bq)


class _GaugeMetric(_Metric):
    def __init__(self, spec: MetricSpec, analysis: AnalysisSpec, mode: BaselineMode, bank: CountBank) -> None:
        super().__init__(spec, analysis, mode, bank)
        self.test = SignTest(self.sides)
        self.pre_sum = 0.0
        self.pre_n = 0

    def history(self, b: Sample) -> None:
        v = b.gauges.get(self.spec.gauge or "")
        if v is not None:
            self.pre_sum += v
            self.pre_n += 1

    def observe(self, c: Sample, b: Sample | None, weight: float) -> None:
        g = self.spec.gauge or ""
        vc = c.gauges.get(g)
        if vc is None:
            return
        if self.mode is BaselineMode.PRE_POST:
            if self.pre_n:
                self.test.add(vc, self.pre_sum / self.pre_n)
            return
        vb = b.gauges.get(g) if b else None
        if vb is not None:
            self.test.add(vc, vb)

    def canary_n(self) -> float:
        return self.test.windows

    def evidence(self, decisions_allowed: bool) -> Evidence:
        t = self.test
        if t.windows == 0:
            return self._evidence(
                MetricStatus.NO_DATA,
                None,
                0,
                self.pre_n,
                f"no {self.spec.gauge} values paired with the baseline yet: holding",
            )
        e_fail, e_pass, lo, hi, est, level = t.evaluate(self.alpha, self.pass_alpha)
        status = self._status(e_fail, e_pass, True, decisions_allowed)
        r = CountResult(e_fail, e_pass, lo, hi, est, 1.0, level)
        cv = t.sum_canary / t.windows
        bv = t.sum_baseline / t.windows
        detail = (
            f"canary {self.spec.gauge} mean {cv:.4g} vs baseline {bv:.4g} (median paired ratio "
            f"{explain.ratio(est)}, {explain.interval(lo, hi, level)}) over {t.windows} windows: "
            f"{explain.status_word(status, self.spec.critical_change, self.harmful_up)}"
        )
        return self._evidence(
            status,
            r,
            t.windows,
            t.windows if self.mode is BaselineMode.CONCURRENT else self.pre_n,
            detail,
            cv,
            bv,
        )

    def power(self, canary_rate_per_s: float | None) -> str | None:
        return (
            f"{self.spec.name}: {self.test.windows} paired windows so far; the sign test needs roughly "
            f"{math.ceil(2 * math.log(1 / self.pass_alpha) / math.log(2)) + 4}+ consistent windows to certify"
        )


_KINDS: dict[MetricKind, type[_Metric]] = {
    MetricKind.ERRORS: _ErrorMetric,
    MetricKind.LATENCY: _LatencyMetric,
    MetricKind.HISTOGRAM_THRESHOLD: _LatencyMetric,
    MetricKind.THROUGHPUT: _ThroughputMetric,
    MetricKind.GAUGE: _GaugeMetric,
    MetricKind.COUNTER_RATIO: _CounterRatioMetric,
}


class Judge:
    """Canary-vs-baseline analysis of one deploy. Pure: feed it samples, ask it for verdicts."""

    def __init__(
        self, spec: AnalysisSpec, *, start: float, mode: BaselineMode = BaselineMode.CONCURRENT
    ) -> None:
        self.spec = spec
        self.start = float(start)
        self.mode = mode
        self._weights: list[tuple[float, float]] = []
        self._steps: list[float] = []  # data times at which a step took effect
        metrics = spec.metrics
        if mode is BaselineMode.PRE_POST:  # no share to compare against without a concurrent baseline
            metrics = tuple(m for m in metrics if m.kind is not MetricKind.THROUGHPUT)
        self._bank = CountBank()
        self._metrics = [_KINDS[m.kind](m, spec, mode, self._bank) for m in metrics]
        self._count_tests = [
            m
            for m in self._metrics
            if isinstance(m, _CountMetric) and isinstance(m.test, ConcurrentCountTest)
        ]
        self._pending: dict[tuple[float, float], dict[Track, Sample]] = {}
        self._seen: set[tuple[str, float, float]] = set()
        self._failed: Verdict | None = None
        self.duplicates = 0
        self.ignored = 0
        self.canary_requests = 0
        self.total_requests = 0
        self.first_start: float | None = None
        self.on_inconclusive = "hold"  # what the deploy does on INCONCLUSIVE (said in the outlook)
        self.windows = 0
        self.first_end: float | None = None
        self.last_end: float | None = None

    # input ----------------------------------------------------------------------------------------
    def set_weight(self, at: float, weight: float) -> None:
        """Canary traffic share assigned from data time ``at`` on (0 < weight <= 1)."""
        if not 0 < weight <= 1:
            raise ValidationError(f"canary weight must be in (0, 1], got {weight}", field="weight")
        bisect.insort(self._weights, (float(at), float(weight)))

    def mark_step(self, at: float) -> None:
        """A step took effect at data time ``at``: its analysis window and warm-up start there."""
        bisect.insort(self._steps, float(at))

    def step_start(self, t: float) -> float:
        """Data time the step in effect at ``t`` took effect (the deploy's start before any step)."""
        i = bisect.bisect_right(self._steps, t)
        return max(self.start, self._steps[i - 1]) if i else self.start

    def deadline(self, t: float) -> float:
        """End of the analysis window of the step in effect at ``t``."""
        return self.step_start(t) + self.spec.max_duration_s

    def weight_at(self, t: float) -> float:
        i = bisect.bisect_right(self._weights, (t, math.inf))
        return self._weights[i - 1][1] if i else (self._weights[0][1] if self._weights else 0.0)

    def add_many(self, samples: Iterable[Sample]) -> None:
        for s in samples:
            self.add(s)

    def add(self, sample: Sample) -> None:
        """Add one window of one track. Duplicates (same track and window) are ignored."""
        if sample.key in self._seen:
            self.duplicates += 1
            return
        self._seen.add(sample.key)
        if sample.end <= self.start:
            if sample.track is Track.BASELINE:
                for m in self._metrics:
                    m.history(sample)
            else:
                self.ignored += 1
            return
        if self.spec.warmup_s > 0 and sample.start < self.step_start(sample.start) + self.spec.warmup_s:
            self.ignored += 1  # a step's first seconds (cold caches, pods starting) are not judged
            return
        if self.mode is BaselineMode.PRE_POST:
            if sample.track is Track.CANARY:
                self._observe(sample, None)
            else:
                self.ignored += 1
            return
        slot = self._pending.setdefault((sample.start, sample.end), {})
        slot[sample.track] = sample
        if len(slot) == 2:
            del self._pending[(sample.start, sample.end)]
            self._observe(slot[Track.CANARY], slot[Track.BASELINE])

    def _observe(self, c: Sample, b: Sample | None) -> None:
        w = self.weight_at(c.start)
        for m in self._metrics:
            m.observe(c, b, w)
        self._bank.flush()
        self.windows += 1
        self.canary_requests += c.requests
        self.total_requests += c.requests + (b.requests if b is not None else 0)
        self.first_start = c.start if self.first_start is None else min(self.first_start, c.start)
        self.first_end = c.end if self.first_end is None else min(self.first_end, c.end)
        self.last_end = c.end if self.last_end is None else max(self.last_end, c.end)

    # output ---------------------------------------------------------------------------------------
    def _prepare(self, now: float | None) -> tuple[float, bool]:
        t = now if now is not None else (self.last_end if self.last_end is not None else self.start)
        phis = tuple(m.test.dispersion() for m in self._count_tests)  # type: ignore[union-attr]
        for m in self._count_tests:
            m.phis = phis
        return t, self.canary_requests >= self.spec.min_canary_requests

    def _decision(self, statuses: list[MetricStatus], t: float, allowed: bool) -> Decision:
        if any(
            st is MetricStatus.FAIL and m.spec.critical for st, m in zip(statuses, self._metrics, strict=True)
        ):
            return Decision.FAIL
        passing = (
            all(
                st is MetricStatus.PASS or (st is MetricStatus.NO_DATA and not m.spec.must_have_data)
                for st, m in zip(statuses, self._metrics, strict=True)
            )
            and MetricStatus.PASS in statuses
        )
        if passing and allowed:
            return Decision.PASS
        if t >= self.deadline(t):
            return Decision.INCONCLUSIVE
        return Decision.CONTINUE

    def decide(self, now: float | None = None) -> Decision:
        """The decision alone, without building evidence and sentences: for replaying many deploys.
        ``evaluate`` gives the same decision with its explanation."""
        if self._failed is not None:
            return Decision.FAIL
        t, allowed = self._prepare(now)
        d = self._decision([m.status(allowed) for m in self._metrics], t, allowed)
        if d is Decision.FAIL:  # record the full verdict: a FAIL is final
            return self.evaluate(now).decision
        return d

    def evaluate(self, now: float | None = None) -> Verdict:
        if self._failed is not None:
            return self._failed
        t, allowed = self._prepare(now)
        evidence = tuple(m.evidence(allowed) for m in self._metrics)
        decision = self._decision([e.status for e in evidence], t, allowed)
        critical_fail = [e for e in evidence if e.status is MetricStatus.FAIL and e.critical]
        decided_at = self.last_end
        notes = []
        if self.mode is BaselineMode.PRE_POST:
            notes.append(_PRE_POST_NOTE)
        if self._pending:
            notes.append(f"{len(self._pending)} window(s) waiting for the other track")
        if decision is Decision.FAIL:
            v = Verdict(
                Decision.FAIL,
                decided_at,
                t,
                evidence,
                self._summary("fail", critical_fail, notes),
                self.mode.value,
            )
            self._failed = v
            return v
        if decision is Decision.PASS:
            return Verdict(
                Decision.PASS,
                decided_at,
                t,
                evidence,
                self._summary("pass", list(evidence), notes),
                self.mode.value,
            )
        if decision is Decision.INCONCLUSIVE:
            waiting = [
                (e, m)
                for e, m in zip(evidence, self._metrics, strict=True)
                if e.status is not MetricStatus.PASS
            ]
            rate = self._canary_rate()
            power = "; ".join(
                filter(None, (m.power(rate) for e, m in waiting if e.status is not MetricStatus.NO_DATA))
            )
            missing = [e.metric for e, _ in waiting if e.status is MetricStatus.NO_DATA]
            if missing:
                power = (power + "; " if power else "") + "no data at all for " + ", ".join(missing)
            return Verdict(
                Decision.INCONCLUSIVE,
                t,
                t,
                evidence,
                self._summary("inconclusive", [e for e, _ in waiting], notes),
                self.mode.value,
                power or None,
            )
        return Verdict(
            Decision.CONTINUE,
            None,
            t,
            evidence,
            self._summary("continue", [e for e in evidence if e.status is not MetricStatus.PASS], notes),
            self.mode.value,
            outlook=self.outlook(t),
        )

    def outlook(self, t: float) -> Outlook | None:
        """How long the analysis needs at this deploy's traffic so far (see ``judge.planning``)."""
        if self.first_start is None or self.last_end is None or self.last_end <= self.first_start:
            return None
        total_rps = self.total_requests / (self.last_end - self.first_start)
        errors = next((m for m in self._metrics if isinstance(m, _ErrorMetric)), None)
        error_rate = None
        if errors is not None and errors.test.exposure_baseline > 0:
            error_rate = errors.test.x_baseline / errors.test.exposure_baseline
        pre_post = self.mode is BaselineMode.PRE_POST
        share = 1.0 if pre_post else self.weight_at(t)
        dispersion = max((m.test.dispersion() for m in self._count_tests), default=1.0)  # type: ignore[union-attr]
        return plan(
            self.spec,
            total_rps=total_rps,
            error_rate=error_rate,
            canary_share=share,
            on_inconclusive=self.on_inconclusive,
            basis="this deploy's traffic so far",
            dispersion=dispersion,
            elapsed_s=max(t - self.start, 0.0),
            remaining_s=self.deadline(t) - t,
            pre_post=pre_post,
        )

    def _canary_rate(self) -> float | None:
        if self.first_end is None or self.last_end is None or self.canary_requests <= 0:
            return None
        span = self.last_end - max(self.start + self.spec.warmup_s, self.start)
        return self.canary_requests / span if span > 0 else None

    def _summary(self, word: str, evidence: list[Evidence], notes: list[str]) -> str:
        head = {
            "fail": "FAIL: ",
            "pass": "PASS: every metric rules out a harmful change. ",
            "inconclusive": "INCONCLUSIVE: the analysis window ended without enough evidence. ",
            "continue": "CONTINUE: ",
        }[word]
        if word == "pass":
            body = f"{self.canary_requests:,} canary requests over {self.windows} windows"
        else:
            body = "; ".join(e.detail for e in evidence) or "waiting for data"
        tail = (" (" + "; ".join(notes) + ")") if notes else ""
        return head + body + tail
