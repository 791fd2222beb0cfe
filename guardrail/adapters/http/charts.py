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
HEIGHT = 240  # the plot's height plus the margins; the lanes of mark labels are added on top
MARGIN_LEFT = 64
MARGIN_RIGHT = 104  # the reference lines' labels sit here, outside the data (and the last time label fits)
MARGIN_TOP = 8
MARGIN_BOTTOM = 30
LANE_H = 14  # one row of mark labels above the plot
CHAR_W = 6.6  # a generous width of one character of the 11 px labels (bold included), in pixels
RULE_LABEL_GAP = 12  # least vertical distance between two reference-line labels
SINGLE_BAND_HALF_W = 7.0  # a band of one verdict is drawn this wide either side of it
RATIO_FLOOR = 1 / 1024  # a log-scale chart of ratios shows at most [1/1024, 1024] ...
RATIO_CEIL = 1024.0  # ... (a crash-loop canary's first look reads 40x and more: it must stay in range)
MIN_BAND_PX = 6.0  # a confidence band is never drawn thinner than this (an interval off the scale)


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


def log_ticks(lo: float, hi: float, most: int = 9) -> list[float]:
    """Powers of two within [lo, hi]; every second (fourth, ...) one when there would be more than
    ``most``, always including 1 when it is in range."""
    k0, k1 = math.ceil(math.log2(lo) - 1e-9), math.floor(math.log2(hi) + 1e-9)
    every = 1
    while (k1 - k0) // every + 1 > most:
        every *= 2
    return [2.0**k for k in range(k0, k1 + 1) if k % every == 0]


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
    """A horizontal reference line; its label is in the right margin at ``label_y`` (moved off the line
    only as far as needed to keep two labels apart)."""

    y: float
    label: str
    css: str
    label_y: float = 0.0


@dataclass(frozen=True, slots=True)
class Mark:
    """A vertical line at a data time: a step change, the decision, an alert. Its label sits above the
    plot in a row (lane) of its own where it overlaps no other label, at (``label_x``, ``label_y``)."""

    x: float
    label: str
    css: str  # step | decision-fail | decision-pass | alert | rollback
    label_x: float = 0.0
    label_y: float = 0.0
    anchor: str = "start"  # start | end (a label near the right edge ends at its line)
    line_top: float = 0.0  # up to its label, unless that would cross another label


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
    x_anchors: tuple[str, ...] = ()  # text-anchor of each x tick label (the last one may end at its tick)
    series: tuple[Series, ...] = ()
    bands: tuple[Band, ...] = ()
    rules: tuple[Rule, ...] = ()
    marks: tuple[Mark, ...] = ()
    empty: str | None = None  # why there is nothing to draw
    legend: tuple[tuple[str, str], ...] = field(default=())  # (css, label)


def text_width(label: str) -> float:
    """An upper estimate of a label's width in pixels (11 px system-ui; the browser test measures)."""
    return len(label) * CHAR_W


def _frame(
    chart_id: str,
    title: str,
    caption: str,
    unit: str,
    domain: tuple[float, float],
    width: int,
    height: int,
    events: Iterable[Event] = (),
) -> tuple[Chart, Linear]:
    """A chart with nothing drawn yet but its marks, with its data-time axis over ``domain``; and that
    axis's scale. The mark labels get rows of their own above the plot, so they never cover data."""
    left, right = MARGIN_LEFT, width - MARGIN_RIGHT
    x, x_ticks = _x_axis(*domain, left, right)
    placed, lanes = _place_marks(events, x, *domain, width=width)
    top = MARGIN_TOP + lanes * LANE_H
    bottom = top + height - MARGIN_TOP - MARGIN_BOTTOM
    marks = tuple(
        replace(
            m,
            label_y=round(top - 4 - lane * LANE_H, 1),
            line_top=round(top - 13 - lane * LANE_H, 1) if clean else top,
        )
        for m, lane, clean in placed
    )
    anchors = tuple(_x_anchor(t, left, width) for t in x_ticks)
    chart = Chart(
        chart_id,
        title,
        caption,
        unit,
        width,
        round(bottom + MARGIN_BOTTOM),
        left,
        top,
        right,
        bottom,
        x_ticks,
        (),
        anchors,
        marks=marks,
    )
    return chart, x


def _x_anchor(t: Tick, left: float, width: int) -> str:
    """A time label is centred on its tick unless that would run it into the y labels (left of the
    plot) or off the chart (right)."""
    half = text_width(t.label) / 2
    if t.pos - half < left:
        return "start"
    if t.pos + half > width - 2:
        return "end"
    return "middle"


def _place_marks(
    events: Iterable[Event], x: Linear, lo: float, hi: float, *, width: int
) -> tuple[list[tuple[Mark, int, bool]], int]:
    """Each mark in range with its label's lane (0: just above the plot) and whether its line may run up
    to its label (no crossing; else it starts at the plot's top); and the number of lanes used.
    A label goes to the lowest lane where it overlaps no other label, no other mark's line crosses it
    and its own line crosses no label below it."""
    placed: list[tuple[float, float, float, int]] = []  # (span start, span end, line x, lane)
    out: list[tuple[Mark, int, bool]] = []
    for e in sorted((e for e in events if lo <= e.at <= hi), key=lambda e: e.at):
        mx = round(x(e.at), 1)
        w = text_width(e.label)
        if mx + 3 + w <= width - 2:
            anchor, a, b, lx = "start", mx + 1, mx + 3 + w, mx + 3
        else:
            anchor, a, b, lx = "end", mx - 3 - w, mx - 1, mx - 3
        lanes = 1 + max((p[3] for p in placed), default=-1)

        def fits(lane: int, a: float = a, b: float = b, mx: float = mx) -> bool:
            for s0, s1, px, pl in placed:
                if pl == lane and not (b + 6 <= s0 or a >= s1 + 6):
                    return False  # two labels side by side
                if pl > lane and a - 2 <= px <= b + 2:
                    return False  # a higher label's line would cross this label
                if pl < lane and s0 - 2 <= mx <= s1 + 2:
                    return False  # this line would cross a lower label
            return True

        lane = next((k for k in range(lanes + 1) if fits(k)), lanes)
        clean = fits(lane)
        placed.append((a, b, mx, lane))
        out.append((Mark(mx, e.label, e.css, round(lx, 1), 0.0, anchor), lane, clean))
    return out, 1 + max((p[3] for p in placed), default=-1)


def _rule_labels(rules: Sequence[Rule], top: float, bottom: float) -> tuple[Rule, ...]:
    """The rules with label positions at least ``RULE_LABEL_GAP`` apart, each as near its line as
    that allows, within the plot's height."""
    order = sorted(range(len(rules)), key=lambda i: rules[i].y)
    ys = [rules[i].y + 4 for i in order]
    for k in range(1, len(ys)):  # push down ...
        ys[k] = max(ys[k], ys[k - 1] + RULE_LABEL_GAP)
    if ys and ys[-1] > bottom + 4:  # ... and back up from the bottom when that ran off it
        ys[-1] = bottom + 4
        for k in range(len(ys) - 2, -1, -1):
            ys[k] = min(ys[k], ys[k + 1] - RULE_LABEL_GAP)
    out = list(rules)
    for k, i in enumerate(order):
        out[i] = replace(rules[i], label_y=round(max(ys[k], top + 4), 1))
    return tuple(out)


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
    limits: tuple[float, float] | None = None,
) -> str:
    """Closed polygons between low and high, one per run of points where both bounds exist
    (an infinite bound is drawn at the scale's edge by the scale itself). With ``limits`` (the plot's
    top and bottom in pixels), an interval that the scale squeezed into less than ``MIN_BAND_PX``
    (both bounds off the scale) is widened to that, inside the limits."""

    def ys(lo: float, hi: float) -> tuple[float, float]:
        y_lo, y_hi = y(lo), y(hi)  # pixels: y_hi <= y_lo
        if limits is None or y_lo - y_hi >= MIN_BAND_PX:
            return y_lo, y_hi
        top, bottom = limits
        mid = min(max((y_lo + y_hi) / 2, top + MIN_BAND_PX / 2), bottom - MIN_BAND_PX / 2)
        return mid + MIN_BAND_PX / 2, mid - MIN_BAND_PX / 2

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
        if len(run) == 1:  # a single verdict (a decision at the first look): a box around it, not a line
            t, lo, hi = run[0]
            w = SINGLE_BAND_HALF_W
            y_lo, y_hi = ys(lo, hi)
            top = [(x(t) - w, y_hi), (x(t) + w, y_hi)]
            bottom = [(x(t) + w, y_lo), (x(t) - w, y_lo)]
        else:
            top = [(x(t), ys(lo, hi)[1]) for t, lo, hi in run]
            bottom = [(x(t), ys(lo, hi)[0]) for t, lo, hi in reversed(run)]
        coords = [*top, *bottom]
        out.append("M" + " L".join(f"{_fmt(a)} {_fmt(b)}" for a, b in coords) + " Z")
    return " ".join(out)


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
    frame, x = _frame(chart_id, title, caption, unit, domain, width, height, events)
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
    frame, x = _frame(chart_id, title, caption, "ratio", domain, width, height, events)
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
            rules.append(Rule(round(y(1.0), 1), "no change: 1", "unity"))
        rules.append(Rule(round(y(allowed), 1), f"allowed: {allowed:g}", "allowed"))
    else:
        rules.append(Rule(round(y(1.0), 1), "no change: 1", "unity"))
    if critical is not None and critical > 0:
        rules.append(Rule(round(y(critical), 1), f"critical: {critical:g}", "critical"))
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
                    [(p.at, _positive(p.ci_low, lo), p.ci_high) for p in pts if p.estimate is not None],
                    x,
                    y,
                    limits=(frame.top, frame.bottom),
                ),
            ),
        ),
        rules=_rule_labels(rules, frame.top, frame.bottom),
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
