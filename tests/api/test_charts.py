"""Chart geometry of the deploy page (pure: data in, SVG coordinates out)."""

from __future__ import annotations

import itertools
import math
import re

from hypothesis import given
from hypothesis import strategies as st

from guardrail.adapters.http import charts
from guardrail.domain.model import Histogram, Sample, Track

T0 = 1_700_000_000.0
NUM = re.compile(r"-?\d+(?:\.\d+)?")


def ident(v: float) -> float:
    return v


def coords(path: str) -> list[tuple[float, float]]:
    nums = [float(n) for n in NUM.findall(path)]
    return list(zip(nums[::2], nums[1::2], strict=True))


def test_a_window_without_data_breaks_the_line_instead_of_dropping_to_zero() -> None:
    path = charts.line_path([(0, 1.0), (1, 2.0), (2, None), (3, 4.0), (4, math.nan), (5, 6.0)], ident, ident)
    assert path == "M0 1 L1 2 M3 4 M5 6"


def test_band_runs_are_closed_polygons_split_at_missing_bounds() -> None:
    path = charts.band_path([(0, 1.0, 3.0), (1, 1.5, 2.5), (2, None, 2.0), (3, 0.5, 1.0)], ident, ident)
    first, second = path.split(" M")
    assert coords(first) == [(0, 3), (1, 2.5), (1, 1.5), (0, 1)] and first.endswith("Z")
    assert len(coords(second)) == 4  # a single point becomes a thin visible bar


def test_window_values_give_error_rate_and_p99_per_track() -> None:
    h = Histogram((0.1, 0.2, 0.5), (90, 5, 5, 0))  # p99 inside the (0.2, 0.5] bucket
    samples = [
        Sample(Track.CANARY, T0 + 10, T0 + 20, 100, 4, h),
        Sample(Track.CANARY, T0, T0 + 10, 0, 0),
        Sample(Track.BASELINE, T0, T0 + 10, 1000, 1, latencies=tuple(i / 1000 for i in range(1, 1001))),
    ]
    v = charts.window_values(samples)
    canary = v[Track.CANARY]
    assert [w.end for w in canary] == [T0 + 10, T0 + 20]  # in data-time order
    assert canary[0].error_rate is None and canary[0].p99_s is None  # no requests: no value, not zero
    assert canary[1].error_rate == 0.04
    assert canary[1].p99_s is not None and math.isclose(canary[1].p99_s, 0.2 + 0.3 * 4 / 5)
    (b,) = v[Track.BASELINE]
    assert b.p99_s is not None and abs(b.p99_s - 0.99) / 0.99 < 0.02  # raw latencies through the sketch


def test_ticks_are_round_and_cover_the_range() -> None:
    assert charts.nice_ticks(0, 1.37) == [0, 0.5, 1.0, 1.5]
    assert charts.nice_ticks(0, 420) == [0, 200, 400, 600]
    assert charts.log_ticks(0.25, 4) == [0.25, 0.5, 1, 2, 4]


def test_time_domain_keeps_a_little_of_the_pre_deploy_window() -> None:
    history = [Sample(Track.BASELINE, T0 - 600 + 60 * i, T0 - 540 + 60 * i, 10, 0) for i in range(10)]
    live = [Sample(Track.CANARY, T0 + 10 * i, T0 + 10 * (i + 1), 10, 0) for i in range(60)]
    assert charts.time_domain(history + live, T0, T0 + 600) == (T0 - 150, T0 + 600)  # a quarter of 10 min
    assert charts.time_domain(history, T0, T0) == (T0 - 120, T0 + 60)  # at least two minutes, one after


def _ratio(points: list[charts.EstimatePoint], **kw: object) -> charts.Chart:
    return charts.ratio_chart("r", "t", "c", points, domain=(T0, T0 + 100), allowed=1.0, critical=1.5, **kw)  # type: ignore[arg-type]


def test_an_unbounded_interval_is_drawn_to_the_top_of_the_chart() -> None:
    chart = _ratio(
        [charts.EstimatePoint(T0 + 10, 1.2, 0.4, math.inf), charts.EstimatePoint(T0 + 20, 1.1, 0.5, 3.0)]
    )
    (band,) = chart.bands
    ys = [y for _, y in coords(band.path)]
    assert min(ys) == chart.top and max(ys) <= chart.bottom


def test_a_ratio_chart_without_any_estimate_says_so() -> None:
    chart = _ratio([charts.EstimatePoint(T0 + 10, None, None, None)])
    assert chart.empty is not None and "no estimate" in chart.empty


def test_marks_outside_the_time_range_are_left_out() -> None:
    events = [charts.Event(T0 + 50, "FAIL", "decision-fail"), charts.Event(T0 + 500, "late", "alert")]
    chart = _ratio([charts.EstimatePoint(T0 + 50, 2.0, 1.2, 3.0)], events=events)
    assert [m.label for m in chart.marks] == ["FAIL"]
    assert chart.left < chart.marks[0].x < chart.right


def test_allowed_and_critical_changes_are_reference_lines_in_order() -> None:
    chart = _ratio([charts.EstimatePoint(T0 + 50, 1.0, 0.8, 1.3)])
    by_css = {r.css: r.y for r in chart.rules}
    assert by_css["critical"] < by_css["allowed"]  # 1.5 is drawn above 1 (SVG y grows downwards)


@given(st.lists(st.one_of(st.none(), st.floats(0, 1e6)), min_size=1, max_size=40))
def test_every_point_of_a_track_chart_lies_inside_the_plot(values: list[float | None]) -> None:
    ws = [charts.WindowValue(T0 + 10 * i, T0 + 10 * (i + 1), 1, v, None) for i, v in enumerate(values)]
    chart = charts.track_chart(
        "x",
        "t",
        "c",
        {Track.CANARY: ws, Track.BASELINE: []},
        lambda w: w.error_rate,
        domain=(T0, T0 + 10 * (len(values) + 1)),
        unit="%",
        scale=100.0,
        label=str,
    )
    if all(v is None for v in values):
        assert chart.empty is not None
        return
    for s in chart.series:
        for x, y in coords(s.path):
            assert chart.left - 0.1 <= x <= chart.right + 0.1 and chart.top - 0.1 <= y <= chart.bottom + 0.1


def _label_box(m: charts.Mark) -> tuple[float, float]:
    w = charts.text_width(m.label)
    return (m.label_x, m.label_x + w) if m.anchor == "start" else (m.label_x - w, m.label_x)


def test_mark_labels_sit_above_the_plot_in_lanes_that_never_overlap() -> None:
    """A step change, a PASS and a FAIL seconds apart: their labels are above the data, apart."""
    events = [
        charts.Event(T0 + 50, "step 2: 50% of traffic", "step"),
        charts.Event(T0 + 52, "PASS", "decision-pass"),
        charts.Event(T0 + 55, "FAIL", "decision-fail"),
        charts.Event(T0 + 99, "HighErrorRate", "alert"),
    ]
    chart = _ratio([charts.EstimatePoint(T0 + 10 * i, 1.1, 0.8, 1.6) for i in range(1, 10)], events=events)
    assert len(chart.marks) == 4
    for m in chart.marks:
        assert m.label_y <= chart.top - 4, m  # the text's baseline above the plot: it covers no data
        lo, hi = _label_box(m)
        assert lo >= 0 and hi <= chart.width, m
    for i, a in enumerate(chart.marks):
        for b in chart.marks[i + 1 :]:
            if a.label_y == b.label_y:
                (a0, a1), (b0, b1) = _label_box(a), _label_box(b)
                assert a1 <= b0 or b1 <= a0, (a, b)


def test_reference_line_labels_are_right_of_the_plot_and_apart() -> None:
    chart = charts.ratio_chart(
        "r",
        "t",
        "c",
        [charts.EstimatePoint(T0 + 10, 1.0, 0.9, 1.1)],
        domain=(T0, T0 + 100),
        allowed=1.05,
        critical=1.1,
    )
    ys = sorted(r.label_y for r in chart.rules)
    assert len(ys) == 3 and all(b - a >= charts.RULE_LABEL_GAP for a, b in itertools.pairwise(ys))
    assert chart.width - chart.right >= max(charts.text_width(r.label) for r in chart.rules) + 6


def test_the_last_time_label_fits_inside_the_chart() -> None:
    chart = _ratio([charts.EstimatePoint(T0 + 10, 1.0, 0.9, 1.1)])
    last, anchor = chart.x_ticks[-1], chart.x_anchors[-1]
    assert last.pos == chart.right  # the domain ends on a tick: the case that was cut
    right_edge = last.pos + (charts.text_width(last.label) / 2 if anchor == "middle" else 0)
    assert right_edge <= chart.width


def test_a_decision_at_the_first_look_still_draws_a_band_with_height_and_width() -> None:
    """A crash-loop canary: ratio 43, CS 17 to +inf at the only verdict."""
    chart = _ratio([charts.EstimatePoint(T0 + 10, 43.0, 17.0, math.inf)])
    (band,) = chart.bands
    xs, ys = zip(*coords(band.path), strict=True)
    assert max(ys) - min(ys) >= charts.MIN_BAND_PX and max(xs) - min(xs) >= 10
    (dot,) = chart.series[0].dots
    assert chart.top < dot.y < chart.bottom  # the estimate is on the scale, not pinned to its edge


def test_the_first_time_label_never_runs_into_the_value_labels() -> None:
    """A tick on the plot's left edge (a domain starting on the minute) starts there instead of
    being centred into the y labels."""
    chart = charts.ratio_chart(
        "r",
        "t",
        "c",
        [charts.EstimatePoint(T0 + 10, 1.0, 0.9, 1.1)],
        domain=(T0 - 20, T0 + 100),
        allowed=1.0,
        critical=1.5,
    )
    first, anchor = chart.x_ticks[0], chart.x_anchors[0]
    left_edge = first.pos - (charts.text_width(first.label) / 2 if anchor == "middle" else 0)
    assert left_edge >= chart.left
