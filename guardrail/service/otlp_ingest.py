"""OTLP metrics to sample windows: which deploy and track a data point belongs to, per-series
differencing of cumulative points, and per-window aggregation on data time.

Two parts:

- :class:`OtlpAggregator` is pure (no I/O, no clock reads: ``now`` is passed in): fed decoded
  export requests and the routing table of active deploys, it returns the complete windows as
  :class:`~guardrail.domain.model.Sample` lists and what it rejected, and why.
- :class:`OtlpIngest` is the use case: it looks up the active deploys (cached for a second), runs the
  aggregator and hands each complete window to :meth:`Engine.ingest`.

Mapping (see ``docs``: OpenTelemetry semantic conventions):

- deploy: the active deploy whose marker has the resource's ``service.name`` and
  ``deployment.environment.name`` (or the deprecated ``deployment.environment``); track: canary
  when ``service.version`` is the marker's version, baseline when it is ``previous_version``; a
  ``guardrail.track`` attribute (data point, then resource) wins.
- ``http.server.request.duration`` (s) and ``http.server.duration`` (ms) histograms: requests
  (counts), errors (``http.response.status_code`` >= 500 or an ``error.type``), latency histogram
  (bounds in seconds; series of a track are summed, different bounds merged onto their common bounds).
- monotonic sums: per-window increase summed over series, in ``Sample.gauges[name]`` (for
  ``counter_ratio`` metrics); gauges and cumulative non-monotonic sums: the mean over series of each
  series' last value in the window.

Cumulative points are differenced per series (metric, attributes, resource, scope and start time).
A value below the previous one is a reset: the value itself is the increase. The first point of a
series counts in full when the series started after guardrail began watching the deploy (or
appeared in a process already seen), otherwise it is only the reference for the next one.

Windows are ``[k * interval_s, (k + 1) * interval_s)`` of data time (so canary and baseline pair up),
a point falls in the window holding its ``time_unix_nano`` (its end). A window is complete once a
point of the deploy is seen ``grace_s`` past its end; then both tracks' samples are emitted together
(a track without points in it gets no sample: no data is not zero). A point for a window already
emitted (a slow clock, a late exporter) is counted in the oldest open window. Memory is bounded by
the series and open windows of active deploys, never by the number of requests, and a point's work
by ``max_spread_windows``: a span longer than that many windows counts only in the last of them.
Points are rejected (counted in ``partialSuccess``) when their time is more than 7 days before or 30
days after the deploy's start, or a histogram count exceeds an int64 (``guardrail.domain.limits``).
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from guardrail.domain.errors import NotFoundError
from guardrail.domain.limits import DAY_S, INT64_MAX, WINDOW_AFTER_DEPLOY_S, WINDOW_BEFORE_DEPLOY_S
from guardrail.domain.model import Histogram, Sample, Track
from guardrail.domain.records import Deploy
from guardrail.service.engine import Engine
from guardrail.telemetry import Telemetry

log = logging.getLogger("guardrail.otlp")

DELTA = 1
CUMULATIVE = 2

REQUEST_DURATION = "http.server.request.duration"  # stable semantic conventions, seconds
OLD_REQUEST_DURATION = "http.server.duration"  # before HTTP semconv 1.23, milliseconds
_DEFAULT_UNIT = {REQUEST_DURATION: "s", OLD_REQUEST_DURATION: "ms"}
_UNIT_SCALE = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
_STATUS_KEYS = ("http.response.status_code", "http.status_code")
TRACK_KEY = "guardrail.track"
_NS = 1_000_000_000


# --- decoded requests ------------------------------------------------------------------------------
# The wire codecs (guardrail.adapters.otlp) produce these; attribute values are plain Python values
# (str, bool, int, float; arrays and maps as their repr).


@dataclass(slots=True)
class OtlpPoint:
    attributes: tuple[tuple[str, Any], ...]  # sorted by key: part of the series identity
    start_ns: int
    time_ns: int
    value: float = 0.0  # number points: the value; histogram points: the count
    bounds: tuple[float, ...] = ()  # histogram points: explicit bounds in the metric's unit
    bucket_counts: tuple[int, ...] = ()


@dataclass(slots=True)
class OtlpMetric:
    name: str
    unit: str
    kind: str  # "histogram", "sum", "gauge", or the unsupported "exponential_histogram", "summary", ""
    temporality: int = 0  # 1 DELTA, 2 CUMULATIVE, 0 unspecified (gauges)
    monotonic: bool = False
    scope: str = ""  # instrumentation scope name and version
    points: list[OtlpPoint] = field(default_factory=list)


@dataclass(slots=True)
class OtlpResource:
    attributes: dict[str, Any]
    metrics: list[OtlpMetric] = field(default_factory=list)
    key: tuple[tuple[str, Any], ...] = ()  # the resource's identity (sorted attributes)

    def __post_init__(self) -> None:
        if not self.key:
            self.key = tuple(sorted((k, _hashable(v)) for k, v in self.attributes.items()))

    def point_count(self) -> int:
        return sum(len(m.points) for m in self.metrics)


def _hashable(v: Any) -> Any:
    return v if isinstance(v, str | int | float | bool | None) else repr(v)


# --- routing ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeployRoute:
    """What the aggregator needs to know about an active deploy."""

    deploy_id: str
    service: str
    environment: str
    version: str
    previous_version: str
    interval_s: float
    source: str = "push"  # the marker's metrics source: OTLP points feed push deploys only
    started_at: float | None = None  # the deploy's data time: points far from it are rejected

    @classmethod
    def of(cls, deploy: Deploy) -> DeployRoute:
        m = deploy.marker
        return cls(
            deploy.id,
            m.service,
            m.environment,
            m.version,
            m.previous_version,
            m.analysis.interval_s,
            m.metrics_source,
            m.started_at if m.started_at is not None else deploy.data_time,
        )


Routes = Mapping[tuple[str, str], Sequence[DeployRoute]]  # (service, environment) -> newest first


@dataclass(slots=True)
class Outcome:
    """What one export request amounted to."""

    received: int = 0
    accepted: int = 0
    late: int = 0  # accepted, but counted in the oldest open window (theirs was already emitted)
    rejected: Counter[tuple[str, str]] = field(default_factory=Counter)  # (code, message) -> points
    windows: list[tuple[str, list[Sample]]] = field(default_factory=list)  # (deploy id, samples)

    @property
    def rejected_points(self) -> int:
        return sum(self.rejected.values())

    def error_message(self, limit: int = 8) -> str:
        """``"3 point(s): <why>; 1 point(s): <why>"``, the most frequent reasons first."""
        parts = [f"{n} point(s): {msg}" for (_, msg), n in self.rejected.most_common(limit)]
        more = len(self.rejected) - limit
        if more > 0:
            parts.append(f"and {more} more reason(s)")
        return "; ".join(parts)

    def reasons(self) -> Counter[str]:
        out: Counter[str] = Counter()
        for (code, _), n in self.rejected.items():
            out[code] += n
        return out


# --- the aggregator --------------------------------------------------------------------------------


class _Acc:
    """One track's aggregates in one window."""

    __slots__ = ("bounds", "counts", "errors", "gauges", "points", "requests", "sums")

    def __init__(self) -> None:
        self.requests = 0
        self.errors = 0
        self.bounds: tuple[float, ...] | None = None
        self.counts: list[int] | None = None
        self.sums: dict[str, float] = {}
        self.gauges: dict[str, dict[tuple[Any, ...], tuple[int, float]]] = {}  # name -> series -> (t, v)
        self.points = 0

    def add_histogram(self, bounds: tuple[float, ...], counts: Sequence[int]) -> None:
        if self.counts is None or self.bounds is None:
            self.bounds, self.counts = bounds, list(counts)
        elif bounds == self.bounds:
            acc = self.counts
            for i, c in enumerate(counts):
                acc[i] += c
        else:  # different bounds: merge exactly onto the bounds both have
            common = tuple(sorted(set(self.bounds) & set(bounds)))
            mine = rebucket(self.bounds, self.counts, common)
            theirs = rebucket(bounds, counts, common)
            self.bounds, self.counts = common, [a + b for a, b in zip(mine, theirs, strict=True)]

    def sample(self, track: Track, start: float, end: float) -> Sample:
        gauges = dict(self.sums)
        for name, series in self.gauges.items():
            gauges[name] = sum(v for _, v in series.values()) / len(series)
        latency = None
        if self.bounds is not None and self.counts is not None:
            latency = Histogram(self.bounds, tuple(self.counts))
        return Sample(track, start, end, self.requests, self.errors, latency, gauges=gauges)


def rebucket(bounds: Sequence[float], counts: Sequence[int], target: Sequence[float]) -> list[int]:
    """Per-bucket counts on ``target`` bounds, a subset of ``bounds``: exact, since every target
    bucket is a union of source buckets."""
    out = [0] * (len(target) + 1)
    for i, c in enumerate(counts):
        upper = bounds[i] if i < len(bounds) else math.inf
        out[bisect.bisect_left(target, upper)] += c
    return out


@dataclass(slots=True)
class _Series:
    """Cumulative series: the last point (the reference for the next increase). Delta series: the
    (start, time) of the last few points, to recognise an exporter's retry of a request."""

    start_ns: int
    time_ns: int
    value: float = 0.0
    counts: tuple[int, ...] = ()
    bounds: tuple[float, ...] = ()
    recent: tuple[tuple[int, int], ...] = ()

    RECENT = 4  # several processes may share a series' identity: remember a few of their points


class _DeployState:
    __slots__ = (
        "epochs",
        "first_open",
        "first_seen_ns",
        "high_ns",
        "interval_ns",
        "route",
        "series",
        "windows",
    )

    def __init__(self, route: DeployRoute) -> None:
        self.route = route
        self.interval_ns = max(1, round(route.interval_s * _NS))
        self.first_seen_ns: int | None = None  # earliest point time of the first request seen
        self.high_ns = 0  # latest point time seen
        self.first_open: int | None = None  # windows k < first_open were emitted
        self.windows: dict[int, dict[Track, _Acc]] = {}
        self.series: dict[tuple[Any, ...], _Series] = {}
        self.epochs: dict[tuple[Any, ...], list[int]] = {}  # (resource, start) -> export times


class _Reject(Exception):
    def __init__(self, code: str, message: str) -> None:
        self.code, self.message = code, message


class OtlpAggregator:
    """Pure: decoded OTLP requests in, complete sample windows out, on data time."""

    def __init__(
        self,
        *,
        grace_s: float = 2.0,
        stale_after_s: float = 600.0,
        max_future_s: float = 600.0,
        max_series_per_deploy: int = 10_000,
        max_spread_windows: int = 60,
    ) -> None:
        self.grace_ns = round(grace_s * _NS)
        self.stale_after_ns = round(stale_after_s * _NS)
        self.max_future_ns = round(max_future_s * _NS)
        self.max_series = max_series_per_deploy
        self.max_spread = max(1, max_spread_windows)
        self._deploys: dict[str, _DeployState] = {}
        self._interned: dict[tuple[float, ...], tuple[float, ...]] = {}
        self._bounds_cache: dict[tuple[tuple[float, ...], float], tuple[tuple[float, ...], int] | None] = {}

    # --- state ----------------------------------------------------------------------------------
    def forget(self, deploy_id: str) -> None:
        """Drop everything kept for a deploy (it finished, or is gone)."""
        self._deploys.pop(deploy_id, None)

    def deploy_ids(self) -> list[str]:
        return list(self._deploys)

    def stats(self) -> dict[str, int]:
        """What memory is spent on: deploys, series, open windows."""
        return {
            "deploys": len(self._deploys),
            "series": sum(len(d.series) for d in self._deploys.values()),
            "open_windows": sum(len(d.windows) for d in self._deploys.values()),
            "epochs": sum(len(d.epochs) for d in self._deploys.values()),
        }

    def flush(self, deploy_id: str) -> list[Sample]:
        """Emit every open window of a deploy now (e.g. its exporters stopped for good)."""
        st = self._deploys.get(deploy_id)
        if st is None or not st.windows:
            return []
        last = max(st.windows) + 1
        return self._emit(st, last)

    # --- input ----------------------------------------------------------------------------------
    def add(self, resources: Iterable[OtlpResource], routes: Routes, *, now: float) -> Outcome:
        """Route, difference and window one export request's points. ``now`` (wall time) only
        bounds how far into the future a point may be stamped."""
        out = Outcome()
        touched: dict[str, _DeployState] = {}
        limit_ns = round(now * _NS) + self.max_future_ns
        routed: list[tuple[OtlpResource, DeployRoute, Track | None]] = []
        for res in resources:
            n = res.point_count()
            out.received += n
            if n == 0:
                continue
            try:
                route, resource_track = self._route(res, routes)
            except _Reject as r:
                out.rejected[(r.code, r.message)] += n
                continue
            routed.append((res, route, resource_track))
            st = self._deploys.get(route.deploy_id)
            if st is None:
                st = self._deploys[route.deploy_id] = _DeployState(route)
            touched[route.deploy_id] = st
        first: dict[str, int] = {}  # deploys seen for the first time: the earliest point time
        for res, route, _ in routed:
            if touched[route.deploy_id].first_seen_ns is None:
                for m in res.metrics:
                    for p in m.points:
                        if 0 < p.time_ns <= limit_ns and p.time_ns < first.get(route.deploy_id, limit_ns + 1):
                            first[route.deploy_id] = p.time_ns
        for deploy_id, t in first.items():
            touched[deploy_id].first_seen_ns = t
        for res, route, resource_track in routed:
            st = touched[route.deploy_id]
            has_new_duration = any(m.name == REQUEST_DURATION for m in res.metrics)
            for metric in res.metrics:
                if metric.name == OLD_REQUEST_DURATION and has_new_duration:
                    out.rejected[
                        (
                            "duplicate",
                            f"{OLD_REQUEST_DURATION} ignored: the same resource also "
                            f"sends {REQUEST_DURATION}",
                        )
                    ] += len(metric.points)
                    continue
                self._metric(st, res, metric, route, resource_track, limit_ns, out)
        for st in touched.values():
            first_open = (st.high_ns - self.grace_ns) // st.interval_ns
            if st.first_open is None or first_open > st.first_open:
                samples = self._emit(st, first_open)
                if samples:
                    out.windows.append((st.route.deploy_id, samples))
        return out

    def _route(self, res: OtlpResource, routes: Routes) -> tuple[DeployRoute, Track | None]:
        a = res.attributes
        service = a.get("service.name")
        if not isinstance(service, str) or not service:
            raise _Reject("no_service", "resource has no service.name attribute")
        env = a.get("deployment.environment.name", a.get("deployment.environment"))
        if not isinstance(env, str) or not env:
            raise _Reject(
                "no_environment",
                f"resource of service {service!r} has no deployment.environment.name attribute",
            )
        track = _track(a.get(TRACK_KEY), "resource attribute")
        candidates = [r for r in routes.get((service, env), ()) if r.source != "prometheus"]
        if not candidates:
            if routes.get((service, env)):
                raise _Reject(
                    "not_push",
                    f"the active deploy of {service!r} in {env!r} reads its metrics from prometheus "
                    "(metrics.source), not from pushes",
                )
            raise _Reject("no_deploy", f"no active deploy for service {service!r} in environment {env!r}")
        version = a.get("service.version")
        for r in candidates:  # newest first
            if version == r.version or version == r.previous_version:
                return r, track
        if track is not None or self._points_have_track(res):
            return candidates[0], track
        if version is None:
            raise _Reject(
                "no_version",
                f"resource of service {service!r} has neither service.version nor {TRACK_KEY}: "
                "cannot tell canary from baseline",
            )
        r = candidates[0]
        raise _Reject(
            "version_mismatch",
            f"service.version {str(version)[:64]!r} of {service!r} in {env!r} is neither the deploy's version "
            f"{r.version!r} nor its previous_version {r.previous_version!r}",
        )

    @staticmethod
    def _points_have_track(res: OtlpResource) -> bool:
        return any(k == TRACK_KEY for m in res.metrics for p in m.points for k, _ in p.attributes)

    def _metric(
        self,
        st: _DeployState,
        res: OtlpResource,
        metric: OtlpMetric,
        route: DeployRoute,
        resource_track: Track | None,
        limit_ns: int,
        out: Outcome,
    ) -> None:
        try:
            handler, scale = self._handler(metric)
        except _Reject as r:
            out.rejected[(r.code, r.message)] += len(metric.points)
            return
        version = res.attributes.get("service.version")
        default_track = resource_track
        if default_track is None:
            if version == route.version:
                default_track = Track.CANARY
            elif version == route.previous_version:
                default_track = Track.BASELINE
        cumulative = metric.temporality == CUMULATIVE
        base_key = (res.key, metric.scope, metric.name)
        for p in metric.points:
            try:
                track = default_track
                for k, v in p.attributes:
                    if k == TRACK_KEY:
                        track = _track(v, "data point attribute")
                        break
                if track is None:
                    raise _Reject(
                        "version_mismatch",
                        f"service.version {str(version)[:64]!r} is neither the deploy's version "
                        f"{route.version!r} nor its previous_version {route.previous_version!r}",
                    )
                if p.time_ns <= 0:
                    raise _Reject("invalid", "time_unix_nano is missing")
                if p.time_ns > limit_ns:
                    raise _Reject(
                        "future", "time_unix_nano is more than the allowed skew ahead of the server clock"
                    )
                if route.started_at is not None:
                    _check_near_deploy(p.time_ns, route.started_at)
                key = (*base_key, p.attributes, p.start_ns) if cumulative else (*base_key, p.attributes)
                late = handler(self, st, res, metric, p, key, scale, track)
            except _Reject as r:
                out.rejected[(r.code, r.message)] += 1
                continue
            out.accepted += 1
            out.late += late
            if p.time_ns > st.high_ns:
                st.high_ns = p.time_ns

    def _handler(self, metric: OtlpMetric) -> tuple[Callable[..., None], float]:
        kind, name = metric.kind, metric.name
        if kind == "histogram":
            if name not in _DEFAULT_UNIT:
                raise _Reject(
                    "unsupported",
                    f"histogram {name[:100]!r} is not analysed (only {REQUEST_DURATION} and {OLD_REQUEST_DURATION})",
                )
            unit = metric.unit or _DEFAULT_UNIT[name]
            scale = _UNIT_SCALE.get(unit)
            if scale is None:
                raise _Reject("invalid", f"{name}: unit {unit[:20]!r} is not a time unit (s, ms, us, ns)")
            if metric.temporality not in (DELTA, CUMULATIVE):
                raise _Reject(
                    "invalid", f"{name}: aggregationTemporality must be 1 (DELTA) or 2 (CUMULATIVE)"
                )
            return OtlpAggregator._histogram_point, scale
        if kind == "sum":
            if metric.temporality not in (DELTA, CUMULATIVE):
                raise _Reject(
                    "invalid",
                    f"sum {name[:100]!r}: aggregationTemporality must be 1 (DELTA) or 2 (CUMULATIVE)",
                )
            if metric.monotonic:
                return OtlpAggregator._counter_point, 1.0
            if metric.temporality == DELTA:
                raise _Reject(
                    "unsupported",
                    f"non-monotonic delta sum {name[:100]!r}: its level is unknown (send it cumulative, or as a gauge)",
                )
            return OtlpAggregator._gauge_point, 1.0
        if kind == "gauge":
            return OtlpAggregator._gauge_point, 1.0
        what = kind or "empty"
        raise _Reject("unsupported", f"metric type {what} ({name[:100]!r}) is not supported")

    # --- per point ------------------------------------------------------------------------------
    def _series(self, st: _DeployState, key: tuple[Any, ...], p: OtlpPoint) -> _Series | None:
        """A cumulative series' state (None: a new series); rejects a point not newer than the last."""
        s = st.series.get(key)
        if s is None:
            self._room(st)
        elif p.time_ns <= s.time_ns:
            raise _Reject(
                "duplicate", "duplicate or out-of-order point (not newer than the series' last one)"
            )
        return s

    def _delta_seen(self, st: _DeployState, key: tuple[Any, ...], p: OtlpPoint) -> None:
        """Remember a delta point; rejects one seen before (an exporter retrying a request)."""
        s = st.series.get(key)
        span = (p.start_ns, p.time_ns)
        if s is None:
            self._room(st)
            st.series[key] = _Series(p.start_ns, p.time_ns, recent=(span,))
            return
        if span in s.recent:
            raise _Reject("duplicate", "duplicate delta point (same start and time as one already counted)")
        s.recent = (*s.recent[-(_Series.RECENT - 1) :], span)
        s.time_ns = max(s.time_ns, p.time_ns)

    def _room(self, st: _DeployState) -> None:
        if len(st.series) >= self.max_series:
            raise _Reject(
                "too_many_series",
                f"more than {self.max_series} series for one deploy: new series are dropped",
            )

    def _first_since(self, st: _DeployState, res: OtlpResource, p: OtlpPoint) -> int | None:
        """Since when the first point seen of a cumulative series counts in full, or None: then it
        is only the reference for the next one. In full when the series started after guardrail
        began watching the deploy (since its start), or when it appears in a process (resource and
        start time) already seen in an earlier export: a cumulative exporter sends every series every
        time, so this one began after that export (since then)."""
        if st.first_seen_ns is not None and p.start_ns >= st.first_seen_ns:
            return p.start_ns
        epoch = st.epochs.get((res.key, p.start_ns))  # noted already: [previous export, this one]
        if epoch is not None and 0 < epoch[0] < p.time_ns == epoch[1]:
            return epoch[0]
        return None

    def _note_epoch(self, st: _DeployState, res: OtlpResource, p: OtlpPoint) -> None:
        """Export times of a process: [the one before the latest, the latest]."""
        epoch = st.epochs.get((res.key, p.start_ns))
        if epoch is None:
            st.epochs[(res.key, p.start_ns)] = [0, p.time_ns]
        elif p.time_ns > epoch[1]:
            epoch[0], epoch[1] = epoch[1], p.time_ns

    def _acc(self, st: _DeployState, k: int, track: Track) -> _Acc:
        w = st.windows.get(k)
        if w is None:
            w = st.windows[k] = {}
        acc = w.get(track)
        if acc is None:
            acc = w[track] = _Acc()
        acc.points += 1
        return acc

    def _spread(
        self, st: _DeployState, a_ns: int, b_ns: int
    ) -> tuple[tuple[tuple[int, float], ...], float, bool]:
        """The windows the span ``(a, b]`` of a point covers, each with the fraction of the span up to
        its end (cumulative, the last 1.0), the fraction dropped before them, and whether the point
        was late.

        An exporter's collection times drift against the windows: spreading an increase by time
        keeps a window's counts to its own time instead of jittering by a collection interval.
        Parts in windows already emitted: a span reaching into the open windows (a gap in the
        series) keeps only its open part, so a gap never piles up in one window (a one-track spike
        would fail throughput); a span entirely in emitted windows (a clock behind, an export
        delayed) goes to the oldest open window, at most one interval's worth of it, and is rejected
        when it ended more than the grace and an interval before that window.

        The work is bounded: a span over more than ``max_spread_windows`` windows (a delta point
        whose start time lies months back, a cumulative series silent for long) gets only its last
        ``max_spread_windows`` windows' share (the rate is kept, the older part is dropped as for a
        gap), whatever the start time says."""
        interval = st.interval_ns
        kb = (b_ns - 1) // interval
        if not 0 < a_ns < b_ns:
            a_ns = b_ns - 1  # no usable start: the point's time only
        fo = st.first_open
        reach = (kb - self.max_spread + 1) * interval  # the start of the oldest window a point may reach
        if a_ns < reach and (fo is None or fo * interval < reach):
            # a span over more than max_spread_windows windows (a start time months back, a series
            # silent for long): only its last windows get their share, as for a gap
            span = b_ns - a_ns
            parts = tuple(
                (k, 1.0 if k == kb else ((k + 1) * interval - a_ns) / span)
                for k in range(kb - self.max_spread + 1, kb + 1)
            )
            return parts, (reach - a_ns) / span, False
        if fo is None or a_ns >= fo * interval:
            ka = a_ns // interval
            if ka == kb:
                return ((kb, 1.0),), 0.0, False
            span = b_ns - a_ns
            return (
                tuple((k, 1.0 if k == kb else ((k + 1) * interval - a_ns) / span) for k in range(ka, kb + 1)),
                0.0,
                False,
            )
        open_from, span = fo * interval, b_ns - a_ns
        if b_ns > open_from:  # a gap: the part before the open windows cannot be placed any more
            parts = tuple(
                (k, 1.0 if k == kb else ((k + 1) * interval - a_ns) / span) for k in range(fo, kb + 1)
            )
            return parts, (open_from - a_ns) / span, False
        if b_ns <= open_from - self.grace_ns - interval:
            raise _Reject(
                "late",
                "late: the point's data time is in a window analysed already, more than the grace ago "
                "(a clock behind, or an exporter catching up)",
            )
        return ((fo, 1.0),), max(0.0, (b_ns - interval - a_ns) / span), True

    def _histogram_point(
        self,
        st: _DeployState,
        res: OtlpResource,
        metric: OtlpMetric,
        p: OtlpPoint,
        key: tuple[Any, ...],
        scale: float,
        track: Track,
    ) -> bool:
        count = int(p.value)
        if count > INT64_MAX:
            raise _Reject("invalid", f"{metric.name}: count must be at most {INT64_MAX} (an int64)")
        counts = p.bucket_counts
        if counts:
            if len(counts) != len(p.bounds) + 1:
                raise _Reject(
                    "invalid",
                    f"{metric.name}: {len(p.bounds)} explicit bounds need {len(p.bounds) + 1} bucket counts, "
                    f"got {len(counts)}",
                )
            if sum(counts) != count:
                raise _Reject("invalid", f"{metric.name}: count is not the sum of bucket counts")
        bounds, drop = self._seconds(p.bounds, scale, metric.name) if counts else ((), 0)
        since = p.start_ns
        if metric.temporality == CUMULATIVE:
            s = self._series(st, key, p)
            self._note_epoch(st, res, p)
            if s is None:
                st.series[key] = _Series(p.start_ns, p.time_ns, count, counts, self._intern(p.bounds))
                first = self._first_since(st, res, p)
                if first is None:
                    return False  # only the reference for the next point
                since = first
            else:
                since = s.time_ns
                prev_count, prev_counts = int(s.value), s.counts
                s.time_ns, s.value, s.counts = p.time_ns, count, counts
                reset = count < prev_count or p.bounds != s.bounds or len(prev_counts) != len(counts)
                if reset:
                    s.bounds = self._intern(p.bounds)
                if not reset and counts:
                    diff = [c - q for c, q in zip(counts, prev_counts, strict=True)]
                    if min(diff) < 0:
                        reset = True
                    else:
                        count -= prev_count
                        counts = tuple(diff)
                elif not reset:
                    count -= prev_count
                if reset:
                    since = p.start_ns if p.start_ns > since else since  # counted since the restart
        else:
            self._delta_seen(st, key, p)
        if drop:  # bounds <= 0 removed: their buckets merge into the first kept one
            counts = (sum(counts[: drop + 1]), *counts[drop + 1 :])
        parts, dropped, late = self._spread(st, since, p.time_ns)
        error = _is_error(p.attributes)
        if len(parts) == 1 and not dropped:  # the common case: all in one window
            _check_room(st.windows.get(parts[0][0], {}).get(track), count, metric.name)
            acc = self._acc(st, parts[0][0], track)
            acc.requests += count
            if error:
                acc.errors += count
            if counts and count:
                acc.add_histogram(bounds, counts)
            return late
        vector = counts if counts else (count,)
        prev = [round(c * dropped) for c in vector] if dropped else [0] * len(vector)
        shares: list[tuple[int, list[int]]] = []
        for k, upto in parts:
            cum = vector if upto == 1.0 else [round(c * upto) for c in vector]
            shares.append((k, [c - q for c, q in zip(cum, prev, strict=True)]))
            prev = cum  # type: ignore[assignment]
        for k, share in shares:  # checked before any window is changed
            _check_room(st.windows.get(k, {}).get(track), sum(share), metric.name)
        for k, share in shares:
            n = sum(share)
            acc = self._acc(st, k, track)
            acc.requests += n
            if error:
                acc.errors += n
            if counts and n:
                acc.add_histogram(bounds, share)
        return late

    def _intern(self, bounds: tuple[float, ...]) -> tuple[float, ...]:
        """One tuple per distinct bound list, shared by the series that use it."""
        shared = self._interned.get(bounds)
        if shared is None:
            shared = bounds
            if len(self._interned) < 256:
                self._interned[bounds] = bounds
        return shared

    def _seconds(self, bounds: tuple[float, ...], scale: float, name: str) -> tuple[tuple[float, ...], int]:
        """Bounds in seconds with the non-positive ones dropped (the SDK default starts at 0), and
        how many were dropped. Cached: a service sends the same few lists every time."""
        key = (bounds, scale)
        try:
            cached = self._bounds_cache[key]
        except KeyError:
            cached = None
            if all(math.isfinite(b) for b in bounds) and all(
                b2 > b1 for b1, b2 in itertools.pairwise(bounds)
            ):
                drop = sum(1 for b in bounds if b <= 0)
                cached = (tuple(b * scale for b in bounds[drop:]) if scale != 1.0 else bounds[drop:], drop)
            if len(self._bounds_cache) < 256:
                self._bounds_cache[key] = cached
        if cached is None:
            raise _Reject("invalid", f"{name}: explicit bounds must be finite and strictly increasing")
        return cached

    def _counter_point(
        self,
        st: _DeployState,
        res: OtlpResource,
        metric: OtlpMetric,
        p: OtlpPoint,
        key: tuple[Any, ...],
        scale: float,
        track: Track,
    ) -> bool:
        v = p.value
        if not math.isfinite(v) or v < 0:
            raise _Reject(
                "invalid", f"monotonic sum {metric.name[:100]!r}: value must be a finite number >= 0"
            )
        since = p.start_ns
        if metric.temporality == CUMULATIVE:
            s = self._series(st, key, p)
            self._note_epoch(st, res, p)
            if s is None:
                st.series[key] = _Series(p.start_ns, p.time_ns, v)
                first = self._first_since(st, res, p)
                if first is None:
                    return False
                since, inc = first, v
            else:
                if v >= s.value:
                    since, inc = s.time_ns, v - s.value
                else:  # a decrease is a reset
                    since, inc = max(p.start_ns, s.time_ns), v
                s.time_ns, s.value = p.time_ns, v
        else:
            self._delta_seen(st, key, p)
            inc = v
        parts, done, late = self._spread(st, since, p.time_ns)
        name = metric.name
        for k, upto in parts:
            acc = self._acc(st, k, track)
            acc.sums[name] = acc.sums.get(name, 0.0) + inc * (upto - done)
            done = upto
        return late

    def _gauge_point(
        self,
        st: _DeployState,
        res: OtlpResource,
        metric: OtlpMetric,
        p: OtlpPoint,
        key: tuple[Any, ...],
        scale: float,
        track: Track,
    ) -> bool:
        v = p.value
        if not math.isfinite(v):
            raise _Reject("invalid", f"gauge {metric.name[:100]!r}: value must be a finite number")
        parts, _, late = self._spread(st, 0, p.time_ns)  # a level at one time: no state across windows
        acc = self._acc(st, parts[-1][0], track)
        series = acc.gauges.setdefault(metric.name, {})
        skey = key[:4]  # without the start time: one value per series and window
        prev = series.get(skey)
        if prev is None or p.time_ns >= prev[0]:
            series[skey] = (p.time_ns, v)
        return late

    # --- output ---------------------------------------------------------------------------------
    def _emit(self, st: _DeployState, first_open: int) -> list[Sample]:
        """Samples of every window k < first_open, oldest first; then forget stale series."""
        st.first_open = first_open if st.first_open is None else max(st.first_open, first_open)
        done = sorted(k for k in st.windows if k < first_open)
        samples: list[Sample] = []
        for k in done:
            w = st.windows.pop(k)
            start = k * st.interval_ns / _NS
            end = (k + 1) * st.interval_ns / _NS
            for track in (Track.CANARY, Track.BASELINE):
                acc = w.get(track)
                if acc is not None:
                    samples.append(acc.sample(track, start, end))
        if done:
            horizon = st.high_ns - self.stale_after_ns
            stale = [key for key, s in st.series.items() if s.time_ns < horizon]
            for key in stale:
                del st.series[key]
            for ekey in [e for e, (_, last) in st.epochs.items() if last < horizon]:
                del st.epochs[ekey]
        return samples


def _check_near_deploy(time_ns: int, started_at: float) -> None:
    t = time_ns / _NS
    if t < started_at - WINDOW_BEFORE_DEPLOY_S:
        raise _Reject(
            "out_of_range",
            f"time_unix_nano is more than {WINDOW_BEFORE_DEPLOY_S / DAY_S:.0f} days before the deploy's start",
        )
    if t > started_at + WINDOW_AFTER_DEPLOY_S:
        raise _Reject(
            "out_of_range",
            f"time_unix_nano is more than {WINDOW_AFTER_DEPLOY_S / DAY_S:.0f} days after the deploy's start",
        )


def _check_room(acc: _Acc | None, n: int, name: str) -> None:
    if acc is not None and acc.requests + n > INT64_MAX:
        raise _Reject("invalid", f"{name}: a window's count would exceed {INT64_MAX} (an int64)")


def _track(value: Any, where: str) -> Track | None:
    if value is None:
        return None
    try:
        return Track(value)
    except ValueError:
        raise _Reject(
            "invalid_track", f"{TRACK_KEY} {where} must be 'canary' or 'baseline', got {str(value)[:40]!r}"
        ) from None


def _is_error(attributes: tuple[tuple[str, Any], ...]) -> bool:
    for k, v in attributes:
        if k in _STATUS_KEYS:
            try:
                if int(v) >= 500:
                    return True
            except (TypeError, ValueError):
                pass
        elif k == "error.type" and v not in (None, ""):
            return True
    return False


# --- the use case ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ExportResult:
    received: int
    accepted: int
    rejected: int
    error_message: str  # why points were rejected ("" when none were)


class OtlpIngest:
    """Receives decoded OTLP export requests: routes, aggregates and hands complete windows to the
    engine. Routing reads the active deploys at most once per ``route_ttl_s`` of wall time (one
    query, whatever the number of services pushing): a new deploy gets its points within that time,
    and points of services with no deploy cost no database read."""

    MAX_OUTBOX = 1000  # samples per deploy kept for redelivery while the engine fails
    LOG_EVERY_S = 60.0

    def __init__(
        self,
        engine: Engine,
        *,
        telemetry: Telemetry | None = None,
        aggregator: OtlpAggregator | None = None,
        route_ttl_s: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.engine = engine
        self.telemetry = telemetry or engine.telemetry
        self.aggregator = aggregator or OtlpAggregator()
        self.route_ttl_s = route_ttl_s
        self.clock = clock
        self._table: dict[tuple[str, str], list[DeployRoute]] | None = None
        self._table_expires = 0.0
        self._outbox: dict[str, list[Sample]] = {}
        self._logged: dict[str, float] = {}  # rejection reason -> when it was last logged

    async def receive(self, resources: Sequence[OtlpResource]) -> ExportResult:
        routes = await self._lookup()
        outcome = self.aggregator.add(resources, routes, now=self.clock())
        t = self.telemetry
        t.otlp_points.labels("received").inc(outcome.received)
        t.otlp_points.labels("accepted").inc(outcome.accepted)
        for code, n in outcome.reasons().items():
            t.otlp_rejected.labels(code).inc(n)
        if outcome.rejected:
            self._log_rejections(outcome)
        if outcome.late:
            t.otlp_points.labels("late").inc(outcome.late)
        for deploy_id, samples in outcome.windows:
            self._outbox.setdefault(deploy_id, []).extend(samples)
        await self._deliver()
        stats = self.aggregator.stats()
        t.otlp_series.set(stats["series"])
        t.otlp_open_windows.set(stats["open_windows"])
        return ExportResult(
            outcome.received, outcome.accepted, outcome.rejected_points, outcome.error_message()
        )

    async def _lookup(self) -> Routes:
        """The routing table of the active deploys, read at most once per ``route_ttl_s``."""
        now = self.clock()
        if self._table is not None and now < self._table_expires:
            return self._table
        table: dict[tuple[str, str], list[DeployRoute]] = {}
        for d in sorted(await self.engine.active_deploys(), key=lambda d: d.created_at, reverse=True):
            table.setdefault((d.marker.service, d.marker.environment), []).append(DeployRoute.of(d))
        active = {r.deploy_id for routes in table.values() for r in routes}
        for gone in set(self.aggregator.deploy_ids()) - active:  # finished: drop their state
            self._forget(gone)
        self._table, self._table_expires = table, now + self.route_ttl_s
        return table

    def _log_rejections(self, outcome: Outcome) -> None:
        """Senders may ignore partialSuccess (the Python SDK exporter does): say it in the log too,
        once per reason and ``LOG_EVERY_S``."""
        now = self.clock()
        for (code, message), n in outcome.rejected.most_common():
            if now - self._logged.get(code, -math.inf) >= self.LOG_EVERY_S:
                self._logged[code] = now
                log.warning(
                    "OTLP: rejected %d data point(s): %s (logged at most every %.0f s)",
                    n,
                    message,
                    self.LOG_EVERY_S,
                )

    def _forget(self, deploy_id: str) -> None:
        self.aggregator.forget(deploy_id)
        self._outbox.pop(deploy_id, None)

    async def _deliver(self) -> None:
        """Hand every waiting window to the engine. A failure (the database down) keeps the windows
        for the next request and is raised once the others were tried."""
        failure: Exception | None = None
        for deploy_id in list(self._outbox):
            samples = self._outbox.pop(deploy_id, [])
            if not samples:
                continue
            try:
                result = await self.engine.ingest(deploy_id, samples)
            except NotFoundError:
                self._forget(deploy_id)
                continue
            except asyncio.CancelledError:
                self._outbox.setdefault(deploy_id, [])[:0] = samples
                raise
            except Exception as e:
                kept = self._outbox.setdefault(deploy_id, [])
                kept[:0] = samples
                if len(kept) > self.MAX_OUTBOX:
                    log.warning(
                        "dropping %d undelivered OTLP windows of deploy %s",
                        len(kept) - self.MAX_OUTBOX,
                        deploy_id,
                    )
                    del kept[: len(kept) - self.MAX_OUTBOX]
                failure = failure or e
                continue
            if result.deploy.state.terminal:
                self._forget(deploy_id)
                m = result.deploy.marker
                routes = (self._table or {}).get((m.service, m.environment))
                if routes:
                    routes[:] = [r for r in routes if r.deploy_id != deploy_id]
        if failure is not None:
            raise failure
