"""Chart geometry for the deploy page: data in, SVG coordinates and path strings out. Pure (no I/O,
no clock): the template only draws what is computed here.

Two kinds of chart:

- per-window values of each track over data time (error rate, p99 latency), one line per track;
  a window without requests is a gap in the line, never a zero;
- the judge's estimate of a metric (canary / baseline ratio) with its anytime-valid confidence
  sequence as a band, on a log scale, with the allowed and critical changes as reference lines.

Both carry vertical markers (step changes, the decision point, alerts) at their data time.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from guardrail.domain.judge.engine import _histogram_quantile
from guardrail.domain.judge.quantiles import LogSketch
from guardrail.domain.model import Sample, Track

WIDTH = 920
HEIGHT = 240
MARGIN_LEFT = 64
MARGIN_RIGHT = 16
MARGIN_TOP = 14
MARGIN_BOTTOM = 30
RATIO_FLOOR = 1 / 16  # a log-scale chart of ratios shows at most [1/16, 16]
RATIO_CEIL = 16.0


# --- per-window values -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WindowValue:
    """One track's window: its end (data time) and the values plotted there (None: no data)."""

    start: float
    end: float
    requests: int
    error_rate: float | None
    p99_s: float | None


def window_quantile(sample: Sample, q: float) -> float | None:
    """The q-quantile of one window's latency: Prometheus-style interpolation in the histogram,
    else from the raw latencies; None without latency data."""
    if sample.latency is not None and sample.latency.total > 0:
        return _histogram_quantile(sample.latency.bounds, sample.latency.counts, q)
    if sample.latencies:
        sketch = LogSketch()
        sketch.add_many(sample.latencies)
        return sketch.quantile(q)
    return None


def window_values(samples: Iterable[Sample], q: float = 0.99) -> dict[Track, list[WindowValue]]:
    """Per track, its windows in data-time order."""
    out: dict[Track, list[WindowValue]] = {Track.CANARY: [], Track.BASELINE: []}
    for s in samples:
        rate = s.errors / s.requests if s.requests > 0 else None
        out[s.track].append(WindowValue(s.start, s.end, s.requests, rate, window_quantile(s, q)))
    for values in out.values():
        values.sort(key=lambda v: (v.end, v.start))
    return out


# --- scales and ticks ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Linear:
    d0: float
    d1: float
    r0: float
    r1: float

    def __call__(self, v: float) -> float:
        span = self.d1 - self.d0
        t = 0.5 if span == 0 else (v - self.d0) / span
        return self.r0 + t * (self.r1 - self.r0)


@dataclass(frozen=True, slots=True)
class Log:
    """A log scale; values are clipped to the domain (so an unbounded interval ends at the edge)."""

    d0: float
    d1: float
    r0: float
    r1: float

    def __call__(self, v: float) -> float:
        v = min(max(v, self.d0), self.d1)
        span = math.log(self.d1) - math.log(self.d0)
        t = 0.5 if span == 0 else (math.log(v) - math.log(self.d0)) / span
        return self.r0 + t * (self.r1 - self.r0)


def nice_step(span: float, count: int) -> float:
    """A step of 1, 2 or 5 times a power of ten giving about ``count`` intervals over ``span``."""
    if span <= 0 or not math.isfinite(span):
        return 1.0
    raw = span / max(count, 1)
    power = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 5, 10):
        if raw <= m * power:
            return m * power
    return 10 * power  # pragma: no cover - the loop always returns


def nice_ticks(lo: float, hi: float, count: int = 4) -> list[float]:
    """Round tick values covering [lo, hi] (the last tick at or above hi)."""
    step = nice_step(hi - lo, count)
    first = math.floor(lo / step) * step
    ticks = []
    v = first
    while v < hi + step * 0.999 and len(ticks) < 50:
        ticks.append(round(v, 12))
        v += step
    return ticks


def log_ticks(lo: float, hi: float) -> list[float]:
    """Powers of two within [lo, hi]."""
    k0, k1 = math.ceil(math.log2(lo) - 1e-9), math.floor(math.log2(hi) + 1e-9)
    return [2.0**k for k in range(k0, k1 + 1)]


def time_step(span_s: float) -> float:
    for step in (10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400, 21600, 43200, 86400):
        if span_s / step <= 8:
            return float(step)
    return 86400.0 * math.ceil(span_s / 86400 / 8)


def clock_label(t: float, with_seconds: bool) -> str:
    """A data time as UTC wall-clock text (pure: formats a given number, reads no clock)."""
    return datetime.fromtimestamp(t, UTC).strftime("%H:%M:%S" if with_seconds else "%H:%M")


# --- the chart model -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Tick:
    pos: float  # pixels along the axis
    label: str


@dataclass(frozen=True, slots=True)
class Dot:
    x: float
    y: float
    title: str


@dataclass(frozen=True, slots=True)
class Series:
    name: str
    css: str  # canary | baseline | estimate
    path: str  # SVG path data; empty when the series has no point
    dots: tuple[Dot, ...] = ()


@dataclass(frozen=True, slots=True)
class Band:
    name: str
    css: str
    path: str  # a closed SVG path


@dataclass(frozen=True, slots=True)
class Rule:
    """A horizontal reference line."""

    y: float
    label: str
    css: str


@dataclass(frozen=True, slots=True)
class Mark:
    """A vertical line at a data time: a step change, the decision, an alert."""

    x: float
    label: str
    css: str  # step | decision-fail | decision-pass | alert | rollback


@dataclass(frozen=True, slots=True)
class Event:
    """What the caller knows happened at a data time (becomes a :class:`Mark` when in range)."""

    at: float
    label: str
    css: str


@dataclass(frozen=True, slots=True)
class Chart:
    id: str
    title: str
    caption: str
    unit: str
    width: int
    height: int
    left: float
    top: float
    right: float
    bottom: float
    x_ticks: tuple[Tick, ...]
    y_ticks: tuple[Tick, ...]
    series: tuple[Series, ...] = ()
    bands: tuple[Band, ...] = ()
    rules: tuple[Rule, ...] = ()
    marks: tuple[Mark, ...] = ()
    empty: str | None = None  # why there is nothing to draw
    legend: tuple[tuple[str, str], ...] = field(default=())  # (css, label)


def _box(width: int, height: int) -> tuple[float, float, float, float]:
    return MARGIN_LEFT, MARGIN_TOP, width - MARGIN_RIGHT, height - MARGIN_BOTTOM


def _frame(
    chart_id: str, title: str, caption: str, unit: str, domain: tuple[float, float], width: int, height: int
) -> tuple[Chart, Linear]:
    """A chart with nothing drawn yet, in the standard box and with its data-time axis over
    ``domain``; and that axis's scale."""
    left, top, right, bottom = _box(width, height)
    x, x_ticks = _x_axis(*domain, left, right)
    return Chart(chart_id, title, caption, unit, width, height, left, top, right, bottom, x_ticks, ()), x


def _fmt(v: float) -> str:
    return f"{v:.1f}".rstrip("0").rstrip(".") if v != int(v) else str(int(v))


def line_path(
    points: Sequence[tuple[float, float | None]], x: Callable[[float], float], y: Callable[[float], float]
) -> str:
    """``M x y L x y ...``; a None value breaks the line (the next point starts a new segment)."""
    parts: list[str] = []
    pen_down = False
    for t, v in points:
        if v is None or not math.isfinite(v):
            pen_down = False
            continue
        parts.append(f"{'L' if pen_down else 'M'}{_fmt(x(t))} {_fmt(y(v))}")
        pen_down = True
    return " ".join(parts)


def band_path(
    points: Sequence[tuple[float, float | None, float | None]],
    x: Callable[[float], float],
    y: Callable[[float], float],
) -> str:
    """Closed polygons between low and high, one per run of points where both bounds exist
    (an infinite bound is drawn at the scale's edge by the scale itself)."""
    runs: list[list[tuple[float, float, float]]] = [[]]
    for t, lo, hi in points:
        if lo is None or hi is None or math.isnan(lo) or math.isnan(hi):
            if runs[-1]:
                runs.append([])
            continue
        runs[-1].append((t, lo, hi))
    out = []
    for run in runs:
        if not run:
            continue
        if len(run) == 1:  # a single point: a thin bar, so that it stays visible
            t, lo, hi = run[0]
            top = [(x(t) - 1.5, y(hi)), (x(t) + 1.5, y(hi))]
            bottom = [(x(t) + 1.5, y(lo)), (x(t) - 1.5, y(lo))]
        else:
            top = [(x(t), y(hi)) for t, _, hi in run]
            bottom = [(x(t), y(lo)) for t, lo, _ in reversed(run)]
        coords = [*top, *bottom]
        out.append("M" + " L".join(f"{_fmt(a)} {_fmt(b)}" for a, b in coords) + " Z")
    return " ".join(out)


def _marks(events: Iterable[Event], x: Linear, lo: float, hi: float) -> tuple[Mark, ...]:
    return tuple(Mark(round(x(e.at), 1), e.label, e.css) for e in events if lo <= e.at <= hi)


def _x_axis(t0: float, t1: float, left: float, right: float) -> tuple[Linear, tuple[Tick, ...]]:
    if t1 <= t0:
        t1 = t0 + 60
    x = Linear(t0, t1, left, right)
    step = time_step(t1 - t0)
    first = math.ceil(t0 / step) * step
    ticks = []
    t = first
    while t <= t1:
        ticks.append(Tick(round(x(t), 1), clock_label(t, with_seconds=step < 60)))
        t += step
    return x, tuple(ticks)


def time_domain(samples: Sequence[Sample], started_at: float, end: float) -> tuple[float, float]:
    """The data-time range to draw: the deploy from its start to the latest data, plus a little of
    the pre-deploy baseline (a quarter of the deploy's span, at least two minutes) for context."""
    end = max([end, *(s.end for s in samples)]) if samples else end
    span = max(end - started_at, 60.0)
    first = min((s.start for s in samples), default=started_at)
    return max(first, started_at - max(span / 4, 120.0)), started_at + span


def track_chart(
    chart_id: str,
    title: str,
    caption: str,
    values: Mapping[Track, Sequence[WindowValue]],
    pick: Callable[[WindowValue], float | None],
    *,
    domain: tuple[float, float],
    unit: str,
    scale: float,
    label: Callable[[float], str],
    events: Iterable[Event] = (),
    width: int = WIDTH,
    height: int = HEIGHT,
) -> Chart:
    """Canary and baseline per window over data time; ``scale`` converts a value to the unit shown
    (100 for percent, 1000 for milliseconds)."""
    frame, x = _frame(chart_id, title, caption, unit, domain, width, height)
    t0, t1 = domain

    def scaled(w: WindowValue) -> float | None:
        v = pick(w)
        return None if v is None else v * scale

    shown = {track: [(w.end, scaled(w)) for w in ws if t0 <= w.end <= t1] for track, ws in values.items()}
    numbers = [v for pts in shown.values() for _, v in pts if v is not None and math.isfinite(v)]
    if not numbers:
        return replace(frame, empty="no windows with data in this range yet")
    y_ticks_v = nice_ticks(0.0, max(numbers) * 1.05 or 1.0)
    y = Linear(0.0, y_ticks_v[-1], frame.bottom, frame.top)
    series = []
    for track in (Track.BASELINE, Track.CANARY):
        pts = shown.get(track, [])
        dots = tuple(
            Dot(round(x(t), 1), round(y(v), 1), f"{track.value} {clock_label(t, True)}: {label(v)}")
            for t, v in pts
            if v is not None and math.isfinite(v)
        )
        series.append(Series(track.value, track.value, line_path(pts, x, y), dots))
    return replace(
        frame,
        y_ticks=tuple(Tick(round(y(v), 1), label(v)) for v in y_ticks_v),
        series=tuple(series),
        marks=_marks(events, x, t0, t1),
        legend=(("baseline", "baseline"), ("canary", "canary")),
    )


@dataclass(frozen=True, slots=True)
class EstimatePoint:
    at: float  # data time of the verdict
    estimate: float | None
    ci_low: float | None
    ci_high: float | None


def estimate_points(verdicts: Iterable[tuple[float, Mapping[str, Any]]], metric: str) -> list[EstimatePoint]:
    """One metric's estimate and confidence sequence from a run of (data time, verdict dict)."""
    out: list[EstimatePoint] = []
    for at, verdict in verdicts:
        for ev in verdict.get("evidence") or ():
            if ev.get("metric") == metric:
                out.append(
                    EstimatePoint(
                        at, _num(ev.get("estimate")), _num(ev.get("ci_low")), _num(ev.get("ci_high"))
                    )
                )
                break
    out.sort(key=lambda p: p.at)
    return out


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float) or math.isnan(v):
        return None
    return float(v)


def ratio_chart(
    chart_id: str,
    title: str,
    caption: str,
    points: Sequence[EstimatePoint],
    *,
    domain: tuple[float, float],
    allowed: float | None,
    critical: float | None,
    events: Iterable[Event] = (),
    width: int = WIDTH,
    height: int = HEIGHT,
) -> Chart:
    """The judge's canary/baseline ratio over data time with its confidence sequence (log scale).
    An unbounded side of the interval is drawn to the chart's edge."""
    frame, x = _frame(chart_id, title, caption, "ratio", domain, width, height)
    t0, t1 = domain
    pts = [p for p in points if t0 <= p.at <= t1]
    finite = [
        v
        for p in pts
        for v in (p.estimate, p.ci_low, p.ci_high)
        if v is not None and math.isfinite(v) and v > 0
    ]
    finite += [v for v in (1.0, allowed, critical) if v is not None and v > 0]
    lo = max(RATIO_FLOOR, 2.0 ** math.floor(math.log2(min(finite) * 0.95)))
    hi = min(RATIO_CEIL, 2.0 ** math.ceil(math.log2(max(finite) * 1.05)))
    y = Log(lo, hi, frame.bottom, frame.top)
    has_estimate = any(p.estimate is not None for p in pts)
    rules = []
    if allowed is not None and allowed > 0:
        if allowed != 1.0:
            rules.append(Rule(round(y(1.0), 1), "no change (1)", "unity"))
        rules.append(
            Rule(
                round(y(allowed), 1),
                "allowed: no change (1)" if allowed == 1.0 else f"allowed ({allowed:g})",
                "allowed",
            )
        )
    else:
        rules.append(Rule(round(y(1.0), 1), "no change (1)", "unity"))
    if critical is not None and critical > 0:
        rules.append(Rule(round(y(critical), 1), f"critical ({critical:g})", "critical"))
    dots = tuple(
        Dot(
            round(x(p.at), 1),
            round(y(p.estimate), 1),
            f"{clock_label(p.at, True)}: ratio {p.estimate:.3g}, CS {_bound(p.ci_low)} to {_bound(p.ci_high)}",
        )
        for p in pts
        if p.estimate is not None and p.estimate > 0
    )
    return replace(
        frame,
        y_ticks=tuple(Tick(round(y(v), 1), f"{v:g}") for v in log_ticks(lo, hi)),
        series=(
            Series(
                "estimate",
                "estimate",
                line_path([(p.at, p.estimate if p.estimate and p.estimate > 0 else None) for p in pts], x, y),
                dots,
            ),
        ),
        bands=(
            Band(
                "confidence sequence",
                "band",
                band_path(
                    [(p.at, _positive(p.ci_low, lo), p.ci_high) for p in pts if p.estimate is not None], x, y
                ),
            ),
        ),
        rules=tuple(rules),
        marks=_marks(events, x, t0, t1),
        empty=None if has_estimate else "no estimate yet: the judge has no data from both tracks",
        legend=(("estimate", "estimate (canary / baseline)"), ("band", "confidence sequence")),
    )


def _positive(v: float | None, floor: float) -> float | None:
    """A lower bound of 0 (or none below the floor) is drawn at the chart's floor."""
    if v is None:
        return None
    return max(v, floor)


def _bound(v: float | None) -> str:
    if v is None:
        return "unbounded"
    if math.isinf(v):
        return "+inf"
    return f"{v:.3g}"
