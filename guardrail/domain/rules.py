"""Alert rules guardrail evaluates itself, on the sample windows it already has for a deploy, and the
alerts other systems (Alertmanager) send about it. Pure: no clock, no I/O.

The rules are the lesson's alert policy, the same as the Prometheus rules in ``alerts/rules.yml``
(:func:`default_rules` mirrors them, a test keeps the two in step):

=========================  ============================================  ====  ===========  ======
rule                       condition (per track)                         for   window       sends
=========================  ============================================  ====  ===========  ======
HighErrorRate              errors / requests over 5 min > 1%              5m   5m           page
HighLatencyP99             p99 of the 5-min histogram > 1 s               5m   5m           page
DBConnectionPoolExhausted  db_pool_in_use / db_pool_max >= 1              2m   5m stale     page
DiskSpaceLow               disk_free_ratio (or avail / size) < 10%       15m   5m stale     ticket
MemoryLeakSuspected        memory_bytes slope > 0 and 4 h projection     30m   1h lookback  ticket
                           > 2 GiB (least squares over the lookback)
=========================  ============================================  ====  ===========  ======

Evaluation is on *data time*, at fixed points like a Prometheus rule group: every evaluation
interval (``interval_s``, 60 s by default like Prometheus's ``evaluation_interval``) from the end of
the first window the evaluator sees, so replaying 30 minutes of windows in one push walks through the
same points, and fires at the same data time, as receiving them live. A rule's condition at point
``t`` reads the track's data in ``[t - window_s, t]``, both ends included like Prometheus 2's range
selectors and 5-minute lookback: the windows lying entirely inside it for the error rate and the
latency quantile (a window is the increase between two scrapes; ``rate`` counts it only when both
scrapes are in the range), the latest value for the gauges, a least-squares line through every value
for the memory trend. The p99 rule also holds when more than 1% of the requests were slower than the
threshold where the threshold is a bucket bound (the +Inf edge: the 99% rank past the last bound).

``for``: a rule goes pending at the first point where its condition holds, fires at the first point
where it has held at every point for ``for_s`` of data time, and resolves at the first point where it
does not hold. **No data is not zero, and it is not "as before" either**: a point where the condition
cannot be computed (no requests, no histogram, no gauge value in the rule's window; a hole longer
than the window) does not hold, as in Prometheus, where a series missing from the result resolves the
alert: a pending rule starts over, a firing one resolves ("no data"), and once data is back it waits
its full ``for`` again. alerts/RUNBOOK.md ("How the rules read data") has the whole semantics; a
differential test (tests/test_rule_parity.py) holds this evaluator and ``promtool`` to it.

**The canary starts with the new version.** Canary-track windows that end at or before the time the
new version first got traffic (``canary_start``) are the old version's and are left out, like the judge
leaves them out: pre-deploy history pushed for the canary track cannot fire a canary rule. Until the
canary serves (``canary_start`` None), the canary's points wait.

**Attribution.** A page rule firing on the canary pages on-call, but it fails the deploy only when
the breach is the new version's (:func:`attribute`): the same rule's condition did not hold on the
baseline at any point over the rule's window (or, with no baseline data in that window, at the
baseline's last reading: the old version was already breaching before the deploy), and the judge does
not rule out harm on the matching metric (error rate, or the latency quantile of the same q).

Samples may arrive in any order and twice (duplicates are ignored). A window that arrives after
points later than its end were evaluated still counts in the aggregates of the points to come, but
the points already evaluated are not evaluated again; one older than every remaining lookback is dropped
(:attr:`RuleEvaluator.late`). Memory is bounded: only the windows the longest lookback needs are kept,
with only the gauges some rule reads.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from guardrail.domain.errors import ValidationError
from guardrail.domain.judge.engine import _histogram_quantile
from guardrail.domain.judge.explain import pct as _pct
from guardrail.domain.judge.spec import MetricKind, MetricSpec
from guardrail.domain.model import Decision, Evidence, MetricStatus, RuleCheck, Sample, Track, Verdict
from guardrail.domain.notifications import Link, Notice, NoticeAction, Severity, incident_key

GIB = 1024**3

# Prometheus client's default buckets plus a few: raw latencies (``Sample.latencies``) are counted
# into these and every latency rule's threshold, so that "slower than the threshold" stays exact.
RAW_LATENCY_BOUNDS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 30.0, 60.0,
)  # fmt: skip


class RuleKind(StrEnum):
    ERROR_RATE = "error_rate"  # errors / requests over window_s > threshold
    LATENCY_QUANTILE = "latency_quantile"  # quantile of the window's histograms > threshold (seconds)
    POOL_SATURATION = "pool_saturation"  # gauges (in_use, max): in_use / max >= threshold
    DISK_FREE = "disk_free"  # gauges (ratio, avail, size): free ratio < threshold
    MEMORY_TREND = "memory_trend"  # gauge (bytes,): slope > 0 and projection over horizon_s > threshold


class AlertState(StrEnum):
    FIRING = "firing"
    RESOLVED = "resolved"


# per kind: (gauge roles in order, default gauge names); the number of names is checked
_GAUGES: dict[RuleKind, tuple[tuple[str, ...], tuple[str, ...]]] = {
    RuleKind.ERROR_RATE: ((), ()),
    RuleKind.LATENCY_QUANTILE: ((), ()),
    RuleKind.POOL_SATURATION: (("in use", "max"), ("db_pool_in_use", "db_pool_max")),
    RuleKind.DISK_FREE: (
        ("free ratio", "available bytes", "size bytes"),
        ("disk_free_ratio", "disk_avail_bytes", "disk_size_bytes"),
    ),
    RuleKind.MEMORY_TREND: (("bytes",), ("memory_bytes",)),
}


@dataclass(frozen=True, slots=True)
class RuleSpec:
    """One in-service alert rule.

    ``window_s``: the rate window (error rate, latency), the staleness lookback (gauges: the latest
    value at most this old) or the regression lookback (memory trend). ``gauges``: names in
    ``Sample.gauges``, by kind: pool ``(in_use, max)``; disk ``(free_ratio, avail_bytes, size_bytes)``
    (the ratio if a window has it, else avail / size); memory ``(bytes,)``. Empty: the defaults.
    ``fails_deploy``: a firing rule on the canary counts as a failure of the deploy (the engine rolls
    back while a canary step is analysed); unset, True for page rules and False for ticket rules.
    """

    name: str
    kind: RuleKind
    severity: Severity
    threshold: float
    for_s: float
    window_s: float = 300.0
    tracks: tuple[Track, ...] = (Track.CANARY, Track.BASELINE)
    gauges: tuple[str, ...] = ()
    quantile: float = 0.99  # latency
    horizon_s: float = 4 * 3600.0  # memory: how far ahead the trend is projected
    min_requests: int = 0  # error rate, latency: fewer requests in the window = no data
    fails_deploy: bool | None = None
    summary: str = ""  # what the rule watches, for people: "error rate", "p99 latency", ...

    def __post_init__(self) -> None:
        where = f"rules.overrides.{self.name}"
        if not self.name or not self.name.replace("_", "").replace("-", "").isalnum():
            raise ValidationError(
                f"rule name must be letters, digits, '-' or '_', got {self.name!r}", field="rules.overrides"
            )
        if self.severity not in (Severity.PAGE, Severity.TICKET):
            raise ValidationError(
                f"severity must be page or ticket, got {self.severity.value!r}", field=f"{where}.severity"
            )
        if not math.isfinite(self.threshold):
            raise ValidationError("threshold must be a finite number", field=f"{where}.threshold")
        if not (math.isfinite(self.for_s) and self.for_s >= 0):
            raise ValidationError(f"for_s must be >= 0 seconds, got {self.for_s}", field=f"{where}.for_s")
        if not (math.isfinite(self.window_s) and self.window_s > 0):
            raise ValidationError(
                f"window_s must be > 0 seconds, got {self.window_s}", field=f"{where}.window_s"
            )
        if not self.tracks or len(set(self.tracks)) != len(self.tracks):
            raise ValidationError(
                "tracks must name canary and/or baseline, each once", field=f"{where}.tracks"
            )
        if not 0 < self.quantile < 1:
            raise ValidationError(
                f"quantile must be in (0, 1), got {self.quantile}", field=f"{where}.quantile"
            )
        if not (math.isfinite(self.horizon_s) and self.horizon_s > 0):
            raise ValidationError("horizon_s must be > 0 seconds", field=f"{where}.horizon_s")
        if self.min_requests < 0:
            raise ValidationError("min_requests must be >= 0", field=f"{where}.min_requests")
        roles, defaults = _GAUGES[self.kind]
        if not self.gauges:
            object.__setattr__(self, "gauges", defaults)
        elif len(self.gauges) != len(roles) or not all(self.gauges):
            raise ValidationError(
                f"a {self.kind.value} rule reads {len(roles)} gauge(s) ({', '.join(roles) or 'none'}), "
                f"got {list(self.gauges)}",
                field=f"{where}.gauges",
            )
        if self.fails_deploy is None:
            object.__setattr__(self, "fails_deploy", self.severity is Severity.PAGE)
        if not self.summary:
            object.__setattr__(self, "summary", _SUMMARY[self.kind](self))


_SUMMARY = {
    RuleKind.ERROR_RATE: lambda s: "error rate",
    RuleKind.LATENCY_QUANTILE: lambda s: f"p{s.quantile * 100:g} latency",
    RuleKind.POOL_SATURATION: lambda s: "DB connection pool",
    RuleKind.DISK_FREE: lambda s: "free disk space",
    RuleKind.MEMORY_TREND: lambda s: "memory growth",
}


def default_rules() -> tuple[RuleSpec, ...]:
    """The lesson's alert policy, as in ``alerts/rules.yml`` (group ``deployment-guardrails``)."""
    return (
        RuleSpec("HighErrorRate", RuleKind.ERROR_RATE, Severity.PAGE, 0.01, for_s=300, window_s=300),
        RuleSpec("HighLatencyP99", RuleKind.LATENCY_QUANTILE, Severity.PAGE, 1.0, for_s=300, window_s=300),
        RuleSpec("DBConnectionPoolExhausted", RuleKind.POOL_SATURATION, Severity.PAGE, 1.0, for_s=120),
        RuleSpec("DiskSpaceLow", RuleKind.DISK_FREE, Severity.TICKET, 0.10, for_s=900),
        RuleSpec(
            "MemoryLeakSuspected",
            RuleKind.MEMORY_TREND,
            Severity.TICKET,
            2.0 * GIB,
            for_s=1800,
            window_s=3600,
            horizon_s=4 * 3600,
        ),
    )


_TUNABLE = frozenset(
    {"severity", "threshold", "for_s", "window_s", "tracks", "gauges", "quantile", "horizon_s",
     "min_requests", "fails_deploy"}
)  # fmt: skip


def configure_rules(
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    *,
    fails_deploy: bool = True,
    base: Sequence[RuleSpec] | None = None,
) -> tuple[RuleSpec, ...]:
    """``base`` (default: :func:`default_rules`) with per-rule overrides, e.g.
    ``{"HighErrorRate": {"threshold": 0.02}, "DiskSpaceLow": {"enabled": False}}``.
    ``fails_deploy=False`` turns every rule's ``fails_deploy`` off (rules then only notify)."""
    specs = {s.name: s for s in (base if base is not None else default_rules())}
    for name, raw in (overrides or {}).items():
        where = f"rules.overrides.{name}"
        if name not in specs:
            raise ValidationError(f"{where}: no such rule; known: {sorted(specs)}", field=where)
        raw = dict(raw)
        if not raw.pop("enabled", True):
            del specs[name]
            continue
        unknown = set(raw) - _TUNABLE
        if unknown:
            raise ValidationError(
                f"unknown key(s) {sorted(unknown)} in {where}; accepted: {sorted(_TUNABLE | {'enabled'})}",
                field=f"{where}.{sorted(unknown)[0]}",
            )
        try:
            if "severity" in raw:
                raw["severity"] = Severity(raw["severity"])
            if "tracks" in raw:
                raw["tracks"] = tuple(Track(t) for t in raw["tracks"])
            if "gauges" in raw:
                raw["gauges"] = tuple(raw["gauges"])
        except ValueError as e:
            raise ValidationError(f"{where}: {e}", field=where) from None
        if "severity" in raw and "fails_deploy" not in raw:
            raw["fails_deploy"] = None  # re-derived from the new severity
        specs[name] = replace(specs[name], **raw)
    out = tuple(specs.values())
    if not fails_deploy:
        out = tuple(replace(s, fails_deploy=False) for s in out)
    return out


# --- evaluation -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RuleTransition:
    """A rule started firing, or resolved, for one track at data time ``at``."""

    rule: RuleSpec
    track: Track
    state: AlertState
    at: float  # data time of the evaluation point
    since: float  # data time from which the condition held
    value: float  # the measured value (ratio, seconds, bytes) at ``at``
    threshold: float
    sentence: str  # e.g. "canary error rate 2.3% > 1% for 5 min"

    @property
    def fails_deploy(self) -> bool:
        """A firing rule whose spec says so, on the canary (the baseline is the old version: its
        alerts page but do not count against the new one)."""
        return self.state is AlertState.FIRING and bool(self.rule.fails_deploy) and self.track is Track.CANARY

    @property
    def incident_rule(self) -> str:
        """The rule part of the incident key: one incident per deploy, rule and track."""
        return f"{self.rule.name}-{self.track.value}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule.name,
            "kind": self.rule.kind.value,
            "severity": self.rule.severity.value,
            "track": self.track.value,
            "state": self.state.value,
            "at": self.at,
            "since": self.since,
            "value": self.value,
            "threshold": self.threshold,
            "fails_deploy": self.fails_deploy,
            "sentence": self.sentence,
        }

    def notice(
        self,
        *,
        service: str,
        environment: str,
        deploy_id: str | None,
        occurred_at: float,
        links: tuple[Link, ...] = (),
    ) -> Notice:
        """The trigger (firing) or resolve notice of this transition's incident."""
        firing = self.state is AlertState.FIRING
        return Notice(
            key=incident_key(service, environment, deploy_id, self.incident_rule),
            action=NoticeAction.TRIGGER if firing else NoticeAction.RESOLVE,
            severity=self.rule.severity,
            summary=f"{service} ({environment}): {self.sentence}"[:1024],
            service=service,
            environment=environment,
            deploy_id=deploy_id,
            rule=self.rule.name,
            details=self.to_dict(),
            links=links,
            occurred_at=occurred_at,
        )


@dataclass(slots=True)
class _Window:
    start: float
    end: float
    requests: int
    errors: int
    hist: tuple[tuple[float, ...], tuple[int, ...]] | None  # (bounds, counts)
    gauges: dict[str, float]


@dataclass(slots=True)
class _Status:
    since: float | None = None  # data time the condition started to hold (None: not holding)
    firing: bool = False
    value: float = math.nan  # the latest reading's value (kept through points without data)
    last_held: float | None = None  # the latest point at which the condition held
    held_text: str = ""  # what it read then, e.g. "p99 1.3 s > 1 s"
    held_data: float | None = None  # the end of the newest window that reading used
    last_point: float | None = None  # the latest point with a reading
    at: float | None = None  # the latest point evaluated (with or without a reading)


@dataclass(frozen=True, slots=True)
class _Reading:
    value: float
    holds: bool
    text: str  # e.g. "error rate 2.3% > 1%"
    back: str  # e.g. "error rate 0.4%, back under 1%"
    data: float  # the end of the newest window read


@dataclass(frozen=True, slots=True)
class RuleStatus:
    """Where one rule stands on one track after the latest evaluation point."""

    state: str  # "inactive", "pending" or "firing" (Prometheus's alert states)
    since: float | None  # data time the condition started to hold (pending or firing)
    value: float | None  # the value read at the latest point; None when that point had no data
    at: float | None  # the latest point evaluated (None: none yet; past a point with no data at all in
    # the longest lookback, evaluation skips to where the track's data resumes)


@dataclass(slots=True)
class _Track:
    windows: list[tuple[float, float]] = field(default_factory=list)  # (end, start), sorted
    by_key: dict[tuple[float, float], _Window] = field(default_factory=dict)


class RuleEvaluator:
    """Evaluates rules on one deploy's sample windows. Feed samples in any order with :meth:`add`,
    call :meth:`evaluate` with the data time reached; it answers with the transitions (firing,
    resolved) since the last call, in data-time order.

    ``canary_start``: the data time the new version first got traffic (see the module docstring);
    None while it has none; the default (-inf) takes every canary window (a service with no deploy).
    ``interval_s``: the evaluation interval (points every ``interval_s`` of data time from the end of
    the first window seen)."""

    def __init__(
        self, specs: Iterable[RuleSpec], *, canary_start: float | None = -math.inf, interval_s: float = 60.0
    ) -> None:
        self.specs = tuple(specs)
        names = [s.name for s in self.specs]
        if len(set(names)) != len(names):
            raise ValidationError(f"rule names must be unique, got {names}", field="rules")
        if not (math.isfinite(interval_s) and interval_s > 0):
            raise ValidationError(
                f"the evaluation interval must be > 0 seconds, got {interval_s}",
                field="rules.evaluation_interval_s",
            )
        self.interval_s = float(interval_s)
        self._anchor: float | None = None  # the first evaluation point; the others follow every interval
        self._span = max((s.window_s for s in self.specs), default=0.0)
        self._gauge_names = frozenset(g for s in self.specs for g in s.gauges)
        thresholds = {
            s.threshold for s in self.specs if s.kind is RuleKind.LATENCY_QUANTILE and s.threshold > 0
        }
        self._raw_bounds = tuple(sorted(set(RAW_LATENCY_BOUNDS) | thresholds))
        self._tracks: dict[Track, _Track] = {t: _Track() for t in Track}
        self._status: dict[tuple[str, Track], _Status] = {
            (s.name, t): _Status() for s in self.specs for t in s.tracks
        }
        # per track: data time up to which its points were evaluated
        self._evaluated: dict[Track, float] = {t: -math.inf for t in Track}
        self.canary_start = canary_start
        self.duplicates = 0
        self.late = 0  # windows older than every remaining lookback: dropped
        self.before_start = 0  # canary windows of the old version (ending at or before canary_start)

    def set_canary_start(self, at: float | None) -> None:
        """The data time the new version first got traffic (None: not yet)."""
        self.canary_start = at

    def _start(self, track: Track) -> float | None:
        return self.canary_start if track is Track.CANARY else -math.inf

    # input -------------------------------------------------------------------------------------------
    def add_many(self, samples: Iterable[Sample]) -> None:
        for s in samples:
            self.add(s)

    def add(self, sample: Sample) -> None:
        if not self.specs:
            return
        start = self._start(sample.track)
        if start is not None and sample.end <= start:
            self.before_start += 1
            return
        if sample.end <= self._evaluated[sample.track] - self._span:
            self.late += 1
            return
        tr = self._tracks[sample.track]
        key = (sample.start, sample.end)
        if key in tr.by_key:
            self.duplicates += 1
            return
        hist: tuple[tuple[float, ...], tuple[int, ...]] | None = None
        if sample.latency is not None:
            hist = (sample.latency.bounds, sample.latency.counts)
        elif sample.latencies:
            hist = (self._raw_bounds, _bucket(self._raw_bounds, sample.latencies))
        gauges = {k: float(v) for k, v in sample.gauges.items() if k in self._gauge_names}
        tr.by_key[key] = _Window(sample.start, sample.end, sample.requests, sample.errors, hist, gauges)
        bisect.insort(tr.windows, (sample.end, sample.start))

    @property
    def retained(self) -> int:
        """Windows held in memory (bounded by what the longest lookback needs)."""
        return sum(len(t.windows) for t in self._tracks.values())

    @property
    def firing(self) -> list[tuple[RuleSpec, Track, float]]:
        """Rules firing now: (rule, track, data time the condition started to hold)."""
        out = []
        for s in self.specs:
            for t in s.tracks:
                st = self._status[(s.name, t)]
                if st.firing and st.since is not None:
                    out.append((s, t, st.since))
        return out

    def status(self, rule: str, track: Track) -> RuleStatus:
        """Where ``rule`` stands on ``track`` after the latest evaluation point."""
        st = self._status[(rule, track)]
        state = "firing" if st.firing else "pending" if st.since is not None else "inactive"
        value = st.value if st.at is not None and st.last_point == st.at else None
        return RuleStatus(state, st.since, value, st.at)

    # output ------------------------------------------------------------------------------------------
    def evaluate(self, now: float) -> list[RuleTransition]:
        """Evaluate every point in ``(last evaluated, now]`` of data time, in order."""
        if not self.specs:
            return []
        if self._anchor is None:
            firsts = [tr.windows[0][0] for tr in self._tracks.values() if tr.windows]
            self._anchor = min(firsts) if firsts else None
        points: list[tuple[float, Track]] = []
        for track, tr in self._tracks.items():
            start = self._start(track)
            done = self._evaluated[track]
            if start is None or now <= done:
                continue  # the canary is not serving yet: its points wait for it
            if self._anchor is not None:
                points.extend((t, track) for t in self._points(tr, max(done, start), now))
            self._evaluated[track] = now
        points.sort(key=lambda p: (p[0], p[1].value))
        out: list[RuleTransition] = []
        for t, track in points:
            for spec in self.specs:
                if track in spec.tracks:
                    tr_ = self._step(spec, track, t)
                    if tr_ is not None:
                        out.append(tr_)
        self._prune()
        return out

    def _points(self, tr: _Track, after: float, now: float) -> Iterable[float]:
        """The evaluation points in ``(after, now]``. Past a point that reads no data at all (nothing in
        the longest lookback: every rule is inactive after it), the next one is where data resumes."""
        anchor, step = self._anchor, self.interval_s
        assert anchor is not None
        t = anchor if after < anchor else anchor + (math.floor((after - anchor) / step) + 1) * step
        while t <= now:
            yield t
            lo = bisect.bisect_left(tr.windows, (t - self._span, -math.inf))
            if lo < len(tr.windows) and tr.windows[lo][0] <= t:
                t += step
                continue
            nxt = bisect.bisect_right(tr.windows, (t, math.inf))
            if nxt == len(tr.windows):
                return
            t = max(t + step, anchor + math.ceil((tr.windows[nxt][0] - anchor) / step) * step)

    def counts(self, spec: RuleSpec, track: Track, at: float) -> tuple[float, float] | None:
        """(events, requests) of a rate rule over ``[at - window_s, at]`` on one track (the windows
        lying inside it, as the rule reads them): errors for the error rate, requests slower than the
        threshold for a latency quantile (buckets whose lower bound is at or above it); None for gauge
        rules or without data."""
        ws = [w for w in self._in_window(track, at, spec.window_s) if w.start >= at - spec.window_s]
        if spec.kind is RuleKind.ERROR_RATE:
            n = sum(w.requests for w in ws)
            return (float(sum(w.errors for w in ws)), float(n)) if n > 0 else None
        if spec.kind is RuleKind.LATENCY_QUANTILE:
            slow = total = 0.0
            for w in ws:
                if w.hist is None:
                    continue
                bounds, counts = w.hist
                total += sum(counts)
                slow += sum(c for i, c in enumerate(counts) if i > 0 and bounds[i - 1] >= spec.threshold)
            return (slow, total) if total > 0 else None
        return None

    def last_reading(self, spec: RuleSpec, track: Track) -> str:
        """What the rule read at the track's latest point where its condition held ("" if never)."""
        st = self._status.get((spec.name, track))
        return st.held_text if st is not None else ""

    def shared_breach(self, spec: RuleSpec, at: float) -> str | None:
        """Why a canary breach of ``spec`` at ``at`` is not the new version's alone, or None: the
        rule's condition held on the baseline at a point in ``(at - window_s, at]``, or the baseline
        has no reading there and its last reading held (before the deploy, in pre/post mode: with no
        data, the baseline's rule resolves, but what it last read still stands for the old version)."""
        st = self._status.get((spec.name, Track.BASELINE))
        if st is None:
            return None  # the rule does not watch the baseline: nothing to compare with
        recent = at - spec.window_s
        if st.last_held is not None and st.last_held > recent:
            if st.held_data is not None and st.held_data > recent:
                return f"the baseline (old version) breaches it too: {st.held_text}"
            return f"the baseline (old version) was already breaching it at its last data: {st.held_text}"
        no_recent = st.last_point is None or st.last_point <= recent
        if no_recent and st.last_point is not None and st.last_held == st.last_point:
            return f"the baseline (old version) was already breaching it at its last data: {st.held_text}"
        return None

    def close(self, at: float, reason: str = "guardrail stopped watching") -> list[RuleTransition]:
        """Resolve every firing rule (the watch window ended): one resolved transition each."""
        out = []
        for s in self.specs:
            for t in s.tracks:
                st = self._status[(s.name, t)]
                if st.firing:
                    since = st.since if st.since is not None else at
                    sentence = f"{t.value} {s.summary}: {reason} (was firing for {duration(at - since)})"
                    out.append(
                        RuleTransition(s, t, AlertState.RESOLVED, at, since, st.value, s.threshold, sentence)
                    )
                self._status[(s.name, t)] = _Status()
        return out

    def _step(self, spec: RuleSpec, track: Track, t: float) -> RuleTransition | None:
        reading = self._read(spec, track, t)
        st = self._status[(spec.name, track)]
        st.at = t
        if reading is not None:
            st.value = reading.value
            st.last_point = t
        if reading is not None and reading.holds:
            st.last_held, st.held_text, st.held_data = t, reading.text, reading.data
            if st.since is None:
                st.since = t
            if not st.firing and t - st.since >= spec.for_s:
                st.firing = True
                held = f" for {duration(t - st.since)}" if t > st.since else ""
                return RuleTransition(
                    spec, track, AlertState.FIRING, t, st.since, reading.value, spec.threshold,
                    f"{track.value} {reading.text}{held}",
                )  # fmt: skip
            return None
        since, was_firing = st.since, st.firing
        st.since, st.firing = None, False
        if not (was_firing and since is not None):
            return None
        if reading is not None:
            back = reading.back
        else:  # no data: not a recovery, and said so
            back = (
                f"{spec.summary}: no data in the last {duration(spec.window_s)}, resolved without a reading"
            )
        return RuleTransition(
            spec, track, AlertState.RESOLVED, t, since, st.value, spec.threshold,
            f"{track.value} {back} (fired for {duration(t - since)})",
        )  # fmt: skip

    def _prune(self) -> None:
        for track, tr in self._tracks.items():
            done = self._evaluated[track]
            if done == -math.inf and tr.windows:  # waiting for the canary: keep one lookback
                done = tr.windows[-1][0]
            cut = bisect.bisect_right(tr.windows, (done - self._span, math.inf))
            for end, start in tr.windows[:cut]:
                del tr.by_key[(start, end)]
            del tr.windows[:cut]

    def _in_window(self, track: Track, t: float, span: float) -> list[_Window]:
        """The track's windows ending in ``[t - span, t]`` (and after the canary's start), oldest first."""
        tr = self._tracks[track]
        lo = bisect.bisect_left(tr.windows, (t - span, -math.inf))
        start = self._start(track)
        if start is not None and start > -math.inf:
            lo = max(lo, bisect.bisect_right(tr.windows, (start, math.inf)))
        hi = bisect.bisect_right(tr.windows, (t, math.inf))
        return [tr.by_key[(start_, end)] for end, start_ in tr.windows[lo:hi]]

    # one reader per kind: None when there is nothing to judge ----------------------------------------
    def _read(self, spec: RuleSpec, track: Track, t: float) -> _Reading | None:
        ws = self._in_window(track, t, spec.window_s)
        if spec.kind is RuleKind.ERROR_RATE:  # a rate reads the windows lying inside its range
            return _error_rate(spec, [w for w in ws if w.start >= t - spec.window_s])
        if spec.kind is RuleKind.LATENCY_QUANTILE:
            return _latency(spec, [w for w in ws if w.start >= t - spec.window_s])
        if spec.kind is RuleKind.POOL_SATURATION:
            return _pool(spec, ws)
        if spec.kind is RuleKind.DISK_FREE:
            return _disk(spec, ws)
        return _memory(spec, ws, t)


def judge_metrics_for(spec: RuleSpec, metrics: Sequence[MetricSpec]) -> list[str]:
    """Names of the judge's metrics that measure what ``spec`` alerts on: the error rate, or the
    latency quantile of the same q (a rule on gauges has none)."""
    if spec.kind is RuleKind.ERROR_RATE:
        return [m.name for m in metrics if m.kind is MetricKind.ERRORS]
    if spec.kind is RuleKind.LATENCY_QUANTILE:
        return [
            m.name
            for m in metrics
            if m.kind is MetricKind.LATENCY
            and m.quantile is not None
            and abs(m.quantile - spec.quantile) < 1e-9
        ]
    return []


def attribute(
    evaluator: RuleEvaluator,
    at: float,
    *,
    metrics: Sequence[MetricSpec] = (),
    evidence: Sequence[Evidence] = (),
) -> list[RuleCheck]:
    """Every deploy-failing rule firing on the canary at data time ``at``, with whether the breach is
    the new version's. It is not when the baseline breaches the same rule over the same windows
    (:meth:`RuleEvaluator.shared_breach`: a service slow everywhere), nor when the judge rules out
    harm on the matching metric (its non-inferiority test passed: the canary is confidently not worse
    than the baseline by the critical change), nor when the canary's rate over the rule's window is
    within the noise of the baseline's (:func:`_within_noise`: bursts on a tenth of the traffic).
    Otherwise it is, and the deploy fails on it."""
    by_name = {e.metric: e for e in evidence}
    out: list[RuleCheck] = []
    for spec, track, since in evaluator.firing:
        if track is not Track.CANARY or not spec.fails_deploy:
            continue
        reading = evaluator.last_reading(spec, Track.CANARY) or spec.summary
        shared = evaluator.shared_breach(spec, at)
        if shared is not None:
            out.append(RuleCheck(spec.name, since, at, False, reading, shared))
            continue
        judged = [by_name[n] for n in judge_metrics_for(spec, metrics) if n in by_name]
        noise = _within_noise(evaluator, spec, at, max((e.dispersion for e in judged), default=1.0))
        if noise is not None:
            out.append(RuleCheck(spec.name, since, at, False, reading, noise))
            continue
        if judged and all(e.status is MetricStatus.PASS for e in judged):
            e = judged[0]
            why = (
                f"the judge rules out harm on {e.metric} (canary vs baseline ratio "
                f"{_ratio_text(e)}): the breach is not worse than the old version's"
            )
            out.append(RuleCheck(spec.name, since, at, False, reading, why))
            continue
        base = f"the baseline stays under {_threshold_text(spec)}"
        gap = _gap_text(evaluator, spec, at)
        if gap:
            base += f" over the same windows ({gap})"
            if judged:
                e = judged[0]
                why = f"{base}, and the judge does not rule out harm on {e.metric} ({e.status.value})"
            else:
                why = base
            out.append(RuleCheck(spec.name, since, at, True, reading, why))
            continue
        if judged:
            e = judged[0]
            why = f"{base} over the same windows, and the judge does not rule out harm on {e.metric} ({e.status.value})"
        else:
            why = f"{base} over the same windows"
        out.append(RuleCheck(spec.name, since, at, True, reading, why))
    return out


NOISE_Z = 4.0  # how far above the baseline, in standard errors, a canary breach must be to be its own (checked at every look: kept high)


def _within_noise(evaluator: RuleEvaluator, spec: RuleSpec, at: float, dispersion: float) -> str | None:
    """Why the canary's breach is within the noise of the baseline over the rule's window, or None.

    A threshold rule on a 10% canary reads a tenth of the traffic: bursts of errors push its 5-min
    rate over 1% now and then while the service is fine. The breach is the canary's only if its rate
    over the rule's window is above the baseline's over the same windows by ``NOISE_Z`` standard
    errors (two-proportion, inflated by the judge's dispersion of the metric). Gauge rules, and rules
    without concurrent baseline data, are not tested here."""
    c = evaluator.counts(spec, Track.CANARY, at)
    b = evaluator.counts(spec, Track.BASELINE, at)
    if c is None or b is None:
        return None
    (xc, nc), (xb, nb) = c, b
    pooled = (xc + xb) / (nc + nb)
    se = (
        math.sqrt(max(dispersion, 1.0) * pooled * (1 - pooled) * (1 / nc + 1 / nb)) if 0 < pooled < 1 else 0.0
    )
    if se <= 0:
        return None
    z = (xc / nc - xb / nb) / se
    if z >= NOISE_Z:
        return None
    what = (
        "error rate"
        if spec.kind is RuleKind.ERROR_RATE
        else f"share of requests slower than {secs(spec.threshold)}"
    )
    disp = f" at dispersion x{dispersion:.1f}" if dispersion > 1.05 else ""
    return (
        f"the canary's {what} over the rule's window ({pct(xc / nc)}) is not above the baseline's "
        f"({pct(xb / nb)}) by more than the noise (z {z:.1f} < {NOISE_Z:g}{disp})"
    )


def with_rules(verdict: Verdict, checks: Sequence[RuleCheck], at: float) -> Verdict:
    """The verdict with the canary's rule checks: an attributable breach fails the deploy (unless the
    judge already did), an unattributable one is explained in the summary."""
    if not checks:
        return verdict
    blamed = [c for c in checks if c.attributable]
    if blamed and verdict.decision is not Decision.FAIL:
        c = blamed[0]
        summary = f"alert {c.rule} firing on the canary since {duration(at - c.since)} ago ({c.reading}): {c.reason}"
        return replace(verdict, decision=Decision.FAIL, decided_at=at, summary=summary, rules=tuple(checks))
    cleared = [c for c in checks if not c.attributable]
    summary = verdict.summary
    if cleared:
        summary += " Alert rules: " + "; ".join(c.sentence for c in cleared) + "."
    return replace(verdict, summary=summary, rules=tuple(checks))


def _gap_text(evaluator: RuleEvaluator, spec: RuleSpec, at: float) -> str:
    c = evaluator.counts(spec, Track.CANARY, at)
    b = evaluator.counts(spec, Track.BASELINE, at)
    if c is None or b is None or c[1] <= 0 or b[1] <= 0:
        return ""
    what = "errors" if spec.kind is RuleKind.ERROR_RATE else f"slower than {secs(spec.threshold)}"
    return f"{what}: canary {pct(c[0] / c[1])} vs baseline {pct(b[0] / b[1])}"


def _ratio_text(e: Evidence) -> str:
    est = f"{e.estimate:.2f}" if e.estimate is not None else "n/a"
    if e.ci_low is not None and e.ci_high is not None and math.isfinite(e.ci_high):
        return f"{est}, {e.confidence:.0%} interval {e.ci_low:.2f}-{e.ci_high:.2f}"
    return est


def _threshold_text(spec: RuleSpec) -> str:
    if spec.kind is RuleKind.ERROR_RATE:
        return f"{pct(spec.threshold)} errors"
    if spec.kind is RuleKind.LATENCY_QUANTILE:
        return f"p{spec.quantile * 100:g} {secs(spec.threshold)}"
    return f"the {spec.summary} threshold"


def _bucket(bounds: tuple[float, ...], values: Sequence[float]) -> tuple[int, ...]:
    counts = [0] * (len(bounds) + 1)
    for v in values:
        counts[bisect.bisect_left(bounds, v)] += 1  # le semantics: v == bound goes in that bucket
    return tuple(counts)


def _error_rate(spec: RuleSpec, ws: list[_Window]) -> _Reading | None:
    requests = sum(w.requests for w in ws)
    if requests <= 0 or requests < spec.min_requests:
        return None
    rate = sum(w.errors for w in ws) / requests
    return _Reading(
        rate,
        rate > spec.threshold,
        f"error rate {pct(rate)} > {pct(spec.threshold)}",
        f"error rate {pct(rate)}, back under {pct(spec.threshold)}",
        max(w.end for w in ws),
    )


def _latency(spec: RuleSpec, ws: list[_Window]) -> _Reading | None:
    with_hist = [w for w in ws if w.hist is not None]
    if not with_hist:
        return None
    bounds = with_hist[-1].hist[0]  # type: ignore[index]
    counts = [0] * (len(bounds) + 1)
    for w in with_hist:  # a window with other bounds (a re-bucketed service) is left out
        if w.hist is not None and w.hist[0] == bounds:
            for i, c in enumerate(w.hist[1]):
                counts[i] += c
    total = sum(counts)
    if total <= 0 or total < spec.min_requests:
        return None
    q = _histogram_quantile(bounds, counts, spec.quantile)
    if q is None:  # pragma: no cover - total > 0
        return None
    rank = spec.quantile * total
    beyond = sum(counts[:-1]) < rank  # rank in the +Inf bucket: above the last bound
    name = f"p{spec.quantile * 100:g}"
    shown = f"above {secs(q)} (the last bucket bound)" if beyond else secs(q)
    # q > threshold, or, where the threshold is a bucket bound, the rank past it: more than 1 - q of
    # the requests slower than the threshold (histogram_quantile returns the last bound for a rank in
    # +Inf, so "> 1 s" alone misses a p99 past a last bound of 1 s; alerts/rules.yml has the same `or`)
    at_bound = bisect.bisect_left(bounds, spec.threshold)
    past_bound = (
        at_bound < len(bounds) and bounds[at_bound] == spec.threshold and sum(counts[: at_bound + 1]) < rank
    )
    return _Reading(
        q,
        q > spec.threshold or past_bound,
        f"{name} {shown} > {secs(spec.threshold)}",
        f"{name} {shown}, back under {secs(spec.threshold)}",
        max(w.end for w in with_hist),
    )


def _latest(ws: list[_Window], *names: str) -> _Window | None:
    for w in reversed(ws):
        if all(n in w.gauges for n in names):
            return w
    return None


def _pool(spec: RuleSpec, ws: list[_Window]) -> _Reading | None:
    in_use, cap = spec.gauges
    w = _latest(ws, in_use, cap)
    if w is None or w.gauges[cap] <= 0:
        return None
    used, cap_ = w.gauges[in_use], w.gauges[cap]
    ratio = used / cap_
    pool = f"DB connection pool {used:g}/{cap_:g} in use"
    if spec.threshold == 1:
        text, back = f"{pool}: maxed out", f"{pool}: no longer maxed out"
    else:
        text = f"{pool} ({pct(ratio)} >= {pct(spec.threshold)})"
        back = f"{pool} ({pct(ratio)}), back under {pct(spec.threshold)}"
    return _Reading(ratio, ratio >= spec.threshold, text, back, w.end)


def _disk(spec: RuleSpec, ws: list[_Window]) -> _Reading | None:
    ratio_name, avail, size = spec.gauges
    free: float | None = None
    end = 0.0
    for w in reversed(ws):
        if ratio_name in w.gauges:
            free, end = w.gauges[ratio_name], w.end
            break
        if avail in w.gauges and w.gauges.get(size, 0) > 0:
            free, end = w.gauges[avail] / w.gauges[size], w.end
            break
    if free is None:
        return None
    return _Reading(
        free,
        free < spec.threshold,
        f"disk {pct(free)} free < {pct(spec.threshold)}",
        f"disk {pct(free)} free, back over {pct(spec.threshold)}",
        end,
    )


def _memory(spec: RuleSpec, ws: list[_Window], t: float) -> _Reading | None:
    (name,) = spec.gauges
    pts = [(w.end, w.gauges[name]) for w in ws if name in w.gauges]
    if len(pts) < 2:
        return None
    n = len(pts)
    mx = sum(x for x, _ in pts) / n
    my = sum(y for _, y in pts) / n
    sxx = sum((x - mx) ** 2 for x, _ in pts)
    if sxx <= 0:
        return None
    slope = sum((x - mx) * (y - my) for x, y in pts) / sxx  # bytes per second
    projected = my + slope * (t - mx + spec.horizon_s)  # like predict_linear(v[window], horizon)
    rate = f"{'+' if slope >= 0 else '-'}{size(abs(slope) * 3600)}/h"
    ahead = duration(spec.horizon_s)
    return _Reading(
        projected,
        slope > 0 and projected > spec.threshold,
        f"memory grows {rate}: {size(projected)} in {ahead} at this rate > {size(spec.threshold)}",
        f"memory {rate}: {size(projected)} projected in {ahead}, under {size(spec.threshold)}",
        pts[-1][0],
    )


# --- wording ---------------------------------------------------------------------------------------


def duration(s: float) -> str:
    """45 s, 5 min, 1 h 30 min, 2 h."""
    s = max(0.0, s)
    if s < 60:
        return f"{s:.0f} s"
    minutes = round(s / 60)
    if minutes < 60:
        return f"{minutes} min"
    h, m = divmod(minutes, 60)
    return f"{h} h {m} min" if m else f"{h} h"


def pct(x: float) -> str:
    """2.3%, 1%, 10%, 0.045%."""
    out = _pct(x)
    return out[:-3] + "%" if out.endswith(".0%") else out


def secs(x: float) -> str:
    """850 ms, 1 s, 1.42 s."""
    if x < 1:
        return f"{x * 1000:.0f} ms"
    return f"{x:.3g} s"


def size(b: float) -> str:
    """Bytes in binary units: 512 B, 300 MiB, 2 GiB, 2.4 GiB."""
    for unit, scale in (("GiB", GIB), ("MiB", 1024**2), ("KiB", 1024)):
        if abs(b) >= scale:
            return f"{b / scale:.3g} {unit}"
    return f"{b:.0f} B"


# --- alerts from other systems ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ExternalAlert:
    """One alert another system (Alertmanager's webhook) sent: times are unix seconds (wall time of
    that system); ``ends_at`` is None while unknown (Alertmanager's zero time)."""

    fingerprint: str
    status: AlertState
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    starts_at: float
    ends_at: float | None = None
    generator_url: str = ""
    group_key: str = ""
    receiver: str = ""

    @property
    def name(self) -> str:
        return self.labels.get("alertname", "")

    @property
    def service(self) -> str | None:
        return self.labels.get("service") or self.labels.get("job")

    @property
    def environment(self) -> str | None:
        for k in ("environment", "env", "deployment_environment_name"):
            if self.labels.get(k):
                return self.labels[k]
        return None

    @property
    def severity(self) -> str:
        return self.labels.get("severity", "")

    @property
    def summary(self) -> str:
        return self.annotations.get("summary") or self.annotations.get("description") or self.name

    def to_dict(self) -> dict[str, Any]:
        return {
            "fingerprint": self.fingerprint,
            "status": self.status.value,
            "labels": dict(self.labels),
            "annotations": dict(self.annotations),
            "starts_at": self.starts_at,
            "ends_at": self.ends_at,
            "generator_url": self.generator_url,
            "group_key": self.group_key,
            "receiver": self.receiver,
        }


def external_blame(alert: ExternalAlert, baseline_firing: Iterable[str]) -> str | None:
    """Why a firing alert from another system (Alertmanager) is not blamed on the new version, or
    None when it is. Prometheus evaluates ``alerts/rules.yml`` per service and track: an alert of the
    baseline track is the old version's, and a canary-track alert whose same rule also fires on the
    baseline (``baseline_firing``: alert names firing there now) is a breach both versions share.
    An alert without a track label (e.g. the DB pool) is about the service as a whole and counts."""
    track = alert.labels.get("track", "")
    if track == Track.BASELINE.value:
        return "it fires on the baseline (the old version), not on the canary"
    if track and track != Track.CANARY.value:
        return f"it is about track {track!r}, not the canary"
    if track == Track.CANARY.value and alert.name in set(baseline_firing):
        return "the same alert fires on the baseline (the old version) too"
    return None
