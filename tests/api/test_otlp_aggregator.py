"""The OTLP aggregator alone: pure, on data time, no server (requests decoded from protobuf built with
the opentelemetry-proto classes)."""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry.proto.metrics.v1 import metrics_pb2 as pb

from guardrail.adapters.otlp import decode_protobuf
from guardrail.domain.model import Sample, Track
from guardrail.service.otlp_ingest import DeployRoute, OtlpAggregator, Outcome
from tests.api.helpers import T0
from tests.api.otlp_payloads import (
    BASELINE,
    BOUNDS,
    CANARY,
    DELTA,
    body,
    counter,
    gauge,
    histogram,
    hpoint,
    npoint,
    resource,
)

ROUTE = DeployRoute("d1", "checkout", "production", CANARY, BASELINE, 10.0)
ROUTES = {("checkout", "production"): [ROUTE]}
NOW = T0 + 3600


def feed(agg: OtlpAggregator, *resources: pb.ResourceMetrics, routes: Any = None) -> Outcome:
    return agg.add(decode_protobuf(body(*resources)), ROUTES if routes is None else routes, now=NOW)


def samples(out: Outcome) -> dict[tuple[str, float], Sample]:
    return {(s.track.value, s.start - T0): s for _, ss in out.windows for s in ss}


def counts(n: int, slow: int = 0) -> list[int]:
    """n requests: all in the first bucket except ``slow`` in the +Inf bucket."""
    return [n - slow, 0, 0, 0, 0, 0, 0, slow]


def test_cumulative_histogram_is_differenced_and_windows_close_after_the_grace() -> None:
    agg = OtlpAggregator(grace_s=2.0)
    out = feed(
        agg,
        resource(histogram(hpoint(T0 + 1, counts(100))), version=CANARY),
        resource(histogram(hpoint(T0 + 1, counts(900))), version=BASELINE),
    )
    assert (out.accepted, out.rejected_points, out.windows) == (2, 0, [])  # references only
    out = feed(
        agg,
        resource(
            histogram(
                hpoint(T0 + 6, counts(150, slow=5)),
                hpoint(T0 + 6, counts(4), http__response__status_code=500, start=T0 + 2),
            ),
            version=CANARY,
        ),
        resource(histogram(hpoint(T0 + 6, counts(1400))), version=BASELINE),
    )
    assert out.windows == []  # window [T0, T0+10) is still open
    out = feed(agg, resource(histogram(hpoint(T0 + 11, counts(160, slow=5))), version=CANARY))
    assert out.windows == []  # T0+11 is within the grace of its end
    out = feed(agg, resource(histogram(hpoint(T0 + 12, counts(170, slow=5))), version=CANARY))
    got = samples(out)
    assert set(got) == {("canary", 0.0), ("baseline", 0.0)}
    c, b = got[("canary", 0.0)], got[("baseline", 0.0)]
    assert (c.start, c.end) == (T0, T0 + 10)
    # +50 on the 200 series, the new 500 series in full, and 4/5 of the +10 from T0+6 to T0+11
    # (an increase is spread over the windows of its span, by time)
    assert (c.requests, c.errors) == (50 + 4 + 8, 4)
    assert c.latency is not None and c.latency.bounds == BOUNDS
    assert c.latency.counts == (45 + 4 + 8, 0, 0, 0, 0, 0, 0, 5)
    assert (b.requests, b.errors) == (500, 0)


def test_a_decrease_or_a_new_start_time_is_a_reset_that_counts_in_full() -> None:
    agg = OtlpAggregator(grace_s=0)
    c = "payments.total"
    got: dict[tuple[str, float], Sample] = {}
    for t, v, start in (
        (10, 100, T0 - 50),
        (20, 150, T0 - 50),
        (30, 20, T0 - 50),
        (40, 7, T0 + 35),
        (50, 10, T0 + 35),
    ):
        got.update(samples(feed(agg, resource(counter(c, npoint(T0 + t, v, start=start)), version=CANARY))))
    assert got[("canary", 10.0)].gauges[c] == 50
    assert got[("canary", 20.0)].gauges[c] == 20  # restarted, same start time: a decrease
    assert got[("canary", 30.0)].gauges[c] == 7  # a new process (start time): its first value in full
    assert agg.stats()["series"] == 2  # the old process's series stays until it is stale


def test_a_new_series_of_a_process_already_seen_counts_in_full() -> None:
    """Cumulative exporters that stamp every series with the process start (Go SDK): a series that
    first appears in a later export (the first 500 on a route) began after the previous export."""
    agg = OtlpAggregator(grace_s=0)
    start = T0 - 3600
    feed(agg, resource(histogram(hpoint(T0 + 10, counts(100), start=start)), version=CANARY))
    second = resource(
        histogram(
            hpoint(T0 + 20, counts(200), start=start),
            hpoint(T0 + 20, counts(3), start=start, http__response__status_code=503),
        ),
        version=CANARY,
    )
    s = samples(feed(agg, second))[("canary", 10.0)]
    assert (s.requests, s.errors) == (103, 3)


def test_an_increase_is_spread_over_the_windows_of_its_span() -> None:
    """SDK collection times drift (every interval plus the export's duration): counts follow the
    windows' own time, not the number of collections that happen to fall in them."""
    agg = OtlpAggregator(grace_s=0)
    route = DeployRoute("d1", "checkout", "production", CANARY, BASELINE, 1.0)
    routes = {("checkout", "production"): [route]}
    got: dict[tuple[str, float], Sample] = {}
    t, total = T0 + 0.1, 0
    while t < T0 + 30:
        total = round((t - T0) * 1000)  # 1000 requests per second, exported every 0.27-0.33 s
        got.update(
            samples(
                agg.add(
                    decode_protobuf(
                        body(resource(histogram(hpoint(t, counts(total), start=T0)), version=CANARY))
                    ),
                    routes,
                    now=NOW,
                )
            )
        )
        t += 0.27 + 0.06 * ((t * 7) % 1)
    per_window = [s.requests for (_, start), s in sorted(got.items()) if start >= 1]
    assert len(per_window) >= 25
    assert all(abs(n - 1000) <= 1 for n in per_window), per_window


def test_delta_points_are_used_as_they_are_and_a_retried_request_is_rejected() -> None:
    agg = OtlpAggregator(grace_s=0)
    req = [
        resource(
            histogram(hpoint(T0 + 5, counts(40), start=T0), temporality=DELTA),
            counter("jobs.failed", npoint(T0 + 5, 2, start=T0), temporality=DELTA),
            version=CANARY,
        ),
        resource(histogram(hpoint(T0 + 5, counts(60), start=T0), temporality=DELTA), version=BASELINE),
    ]
    out = feed(agg, *req)
    assert out.accepted == 3
    again = feed(agg, *req)
    assert (again.accepted, again.rejected_points) == (0, 3)
    assert {code for code, _ in again.rejected} == {"duplicate"}
    out = feed(
        agg,
        resource(histogram(hpoint(T0 + 15, counts(41), start=T0 + 10), temporality=DELTA), version=CANARY),
    )
    got = samples(out)
    assert got[("canary", 0.0)].requests == 40
    assert got[("canary", 0.0)].gauges == {"jobs.failed": 2}
    assert got[("baseline", 0.0)].requests == 60


def test_gauges_keep_the_last_value_per_series_averaged_over_series() -> None:
    agg = OtlpAggregator(grace_s=0)
    g = "db.pool.in_use"
    feed(
        agg,
        resource(
            gauge(
                g, npoint(T0 + 2, 4.0, pod="a"), npoint(T0 + 8, 6.0, pod="a"), npoint(T0 + 3, 10.0, pod="b")
            ),
            version=CANARY,
        ),
    )
    # an UpDownCounter exported cumulative is a level too
    feed(
        agg,
        resource(counter("queue.depth", npoint(T0 + 4, 9, start=T0 - 50), monotonic=False), version=CANARY),
    )
    out = feed(agg, resource(gauge(g, npoint(T0 + 12, 1.0, pod="a")), version=CANARY))
    s = samples(out)[("canary", 0.0)]
    assert s.gauges == {g: 8.0, "queue.depth": 9}
    assert s.requests == 0 and s.latency is None
    rejected = feed(
        agg, resource(counter("queue.depth", npoint(T0 + 13, 1), temporality=DELTA, monotonic=False))
    )
    assert [code for code, _ in rejected.rejected] == ["unsupported"]


def test_histograms_with_other_bounds_merge_onto_the_common_ones_and_ms_become_seconds() -> None:
    agg = OtlpAggregator(grace_s=0)
    ms_bounds = (0, 25, 50, 100, 250, 500, 1000, 2500, 10000)  # SDK-style: starts at 0, in ms
    feed(
        agg,
        resource(
            histogram(
                hpoint(T0 + 1, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], start=T0, bounds=ms_bounds),
                name="http.server.duration",
                unit="ms",
                temporality=DELTA,
            ),
            version=CANARY,
        ),
    )
    feed(agg, resource(histogram(hpoint(T0 + 2, counts(10), start=T0), temporality=DELTA), version=CANARY))
    out = feed(
        agg, resource(histogram(hpoint(T0 + 11, counts(1), start=T0 + 10), temporality=DELTA), version=CANARY)
    )
    s = samples(out)[("canary", 0.0)]
    assert s.requests == 55 + 10
    assert s.latency is not None
    # common bounds of (0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10) and BOUNDS
    assert s.latency.bounds == (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
    assert s.latency.counts == (1 + 2 + 10, 3, 4, 5, 6, 7, 8, 9 + 10)


def test_the_old_duration_metric_is_ignored_when_the_new_one_is_sent_too() -> None:
    agg = OtlpAggregator(grace_s=0)
    out = feed(
        agg,
        resource(
            histogram(hpoint(T0 + 1, counts(5), start=T0), temporality=DELTA),
            histogram(
                hpoint(T0 + 1, counts(5), start=T0), temporality=DELTA, name="http.server.duration", unit="ms"
            ),
        ),
    )
    assert out.accepted == 1 and [c for c, _ in out.rejected] == ["duplicate"]


def test_a_late_point_counts_in_the_oldest_open_window_unless_it_is_too_old() -> None:
    agg = OtlpAggregator(grace_s=1)

    def delta(t: float, n: int, start: float, version: str) -> Outcome:
        return feed(
            agg,
            resource(
                histogram(hpoint(T0 + t, counts(n), start=T0 + start), temporality=DELTA), version=version
            ),
        )

    delta(5, 10, 0, BASELINE)
    first = delta(11.5, 10, 10, BASELINE)
    assert samples(first)[("baseline", 0.0)].requests == 10  # [T0, T0+10) is emitted
    late = delta(9, 7, 8, CANARY)  # a clock a little behind
    assert (late.accepted, late.late) == (1, 1)
    out = delta(25, 1, 20, BASELINE)
    got = samples(out)
    assert got[("canary", 10.0)].requests == 7  # not lost: in [T0+10, T0+20)
    assert got[("baseline", 10.0)].requests == 10
    too_old = delta(8, 3, 7, CANARY)  # more than a window and the grace behind the oldest open window
    assert too_old.accepted == 0 and [c for c, _ in too_old.rejected] == ["late"]
    assert "late: the point's data time is in a window analysed already" in too_old.error_message()


def test_a_gap_in_a_series_does_not_pile_up_in_one_window() -> None:
    """A canary process silent for 30 s: its increase over the gap is spread by time over the open
    windows; the part in windows already emitted is dropped, not added to the next one."""
    agg = OtlpAggregator(grace_s=0)
    got: dict[tuple[str, float], Sample] = {}
    feed(agg, resource(counter("orders", npoint(T0 + 10, 0)), version=CANARY))
    for t in (10, 20, 30, 40):
        got.update(samples(feed(agg, resource(counter("orders", npoint(T0 + t, 10 * t)), version=BASELINE))))
    got.update(samples(feed(agg, resource(counter("orders", npoint(T0 + 45, 350)), version=CANARY))))
    got.update(samples(feed(agg, resource(counter("orders", npoint(T0 + 50, 500)), version=BASELINE))))
    assert [("canary", w) in got for w in (10.0, 20.0, 30.0)] == [False, False, False]  # no data is not zero
    assert got[("canary", 40.0)].gauges["orders"] == pytest.approx(50)  # the gap's 5 s in [T0+40, T0+50)
    assert got[("baseline", 40.0)].gauges["orders"] == 100


def test_routing_by_service_environment_and_version_or_explicit_track() -> None:
    agg = OtlpAggregator(grace_s=0)
    h = histogram(hpoint(T0 + 1, counts(3), start=T0), temporality=DELTA)
    out = feed(
        agg,
        resource(h, version="v9.9.9"),  # neither version
        resource(h, version="v9.9.9", guardrail__track="baseline"),  # explicit track wins
        resource(h, service="search"),  # no deploy
        resource(
            h, environment=None, deployment__environment="production", version=BASELINE
        ),  # deprecated key
        resource(h, environment=None),
        resource(h, version=None),
        resource(h, version=CANARY, guardrail__track="bogus"),
    )
    codes = {code: n for (code, _), n in out.rejected.items()}
    assert codes == {
        "version_mismatch": 1,
        "no_deploy": 1,
        "no_environment": 1,
        "no_version": 1,
        "invalid_track": 1,
    }
    assert out.accepted == 2
    msgs = out.error_message()
    assert "no active deploy for service 'search' in environment 'production'" in msgs
    assert "'v9.9.9'" in msgs and "previous_version 'v2.4.0'" in msgs
    # a data point attribute wins over the resource's version
    out = feed(
        agg,
        resource(
            histogram(hpoint(T0 + 2, counts(2), start=T0 + 1, guardrail__track="canary"), temporality=DELTA),
            version="v9.9.9",
        ),
    )
    assert out.accepted == 1
    out = feed(
        agg,
        resource(histogram(hpoint(T0 + 11, counts(1), start=T0 + 10), temporality=DELTA), version=BASELINE),
    )
    got = samples(out)
    assert got[("baseline", 0.0)].requests == 6 and got[("canary", 0.0)].requests == 2


def test_deploys_reading_prometheus_and_unsupported_metrics_are_rejected_with_the_reason() -> None:
    agg = OtlpAggregator()
    prom = {
        ("checkout", "production"): [
            DeployRoute("p", "checkout", "production", CANARY, BASELINE, 10, "prometheus")
        ]
    }
    out = feed(agg, resource(histogram(hpoint(T0 + 1, counts(1)))), routes=prom)
    assert [c for c, _ in out.rejected] == ["not_push"]
    m = pb.Metric(
        name="x",
        exponential_histogram=pb.ExponentialHistogram(
            data_points=[pb.ExponentialHistogramDataPoint(time_unix_nano=1)] * 3
        ),
    )
    out = feed(agg, resource(m, histogram(hpoint(T0 + 1, counts(1)), name="db.client.operation.duration")))
    assert out.rejected_points == 4
    assert "metric type exponential_histogram ('x') is not supported" in out.error_message()
    assert "histogram 'db.client.operation.duration' is not analysed" in out.error_message()


def test_a_point_far_in_the_future_is_rejected() -> None:
    agg = OtlpAggregator(max_future_s=60)
    out = feed(agg, resource(histogram(hpoint(NOW + 3600, counts(1)))))
    assert [c for c, _ in out.rejected] == ["future"]


def test_memory_is_bounded_by_series_and_windows_not_by_requests() -> None:
    agg = OtlpAggregator(grace_s=2, stale_after_s=60)
    sizes = []
    for i in range(1, 2001):
        t = T0 + i * 0.5
        points = [hpoint(t, counts(10 * i), route=f"/r{r}", start=T0) for r in range(5)]
        feed(
            agg, resource(histogram(*points), version=CANARY), resource(histogram(*points), version=BASELINE)
        )
        if i % 500 == 0:
            sizes.append(agg.stats())
    assert all(s == {"deploys": 1, "series": 10, "open_windows": 1, "epochs": 2} for s in sizes), sizes
    # a process that goes away: its series are dropped once stale
    for i in range(2001, 2200):
        feed(agg, resource(histogram(hpoint(T0 + i * 0.5, counts(10 * i), start=T0)), version=CANARY))
    assert agg.stats()["series"] == 1


def test_forget_drops_a_deploy() -> None:
    agg = OtlpAggregator()
    feed(agg, resource(histogram(hpoint(T0 + 1, counts(1)))))
    assert agg.deploy_ids() == ["d1"]
    agg.forget("d1")
    assert agg.stats() == {"deploys": 0, "series": 0, "open_windows": 0, "epochs": 0}


def test_flush_emits_what_is_open() -> None:
    agg = OtlpAggregator()
    feed(agg, resource(histogram(hpoint(T0 + 1, counts(4), start=T0), temporality=DELTA), version=CANARY))
    [s] = agg.flush("d1")
    assert (s.track, s.requests, s.start) == (Track.CANARY, 4, T0)
    assert agg.flush("d1") == []


@pytest.mark.parametrize("span_s", [6e6, 6e8])
def test_a_delta_point_spanning_months_is_bounded_to_the_last_windows(span_s: float) -> None:
    """Issue 12, item 1: a start time far before the point's time spread the point over every
    window in between (seconds of a stalled loop at 6e6 s, MemoryError at 6e8 s). Only the last
    ``max_spread_windows`` windows get their share (the rate is kept; the older part is dropped, as
    for a gap)."""
    agg = OtlpAggregator(grace_s=0, max_spread_windows=60)
    n = round(span_s)  # one request per second over the whole span
    point = hpoint(T0 + 5, [n, 0, 0, 0, 0, 0, 0, 0], start=T0 + 5 - span_s)
    out = agg.add(
        decode_protobuf(body(resource(histogram(point, temporality=DELTA), version=CANARY))), ROUTES, now=NOW
    )
    assert out.accepted == 1
    assert agg.stats()["open_windows"] <= 61
    got = samples(out)
    got.update(
        samples(feed(agg, resource(histogram(hpoint(T0 + 25, counts(1), start=T0 + 24), temporality=DELTA))))
    )
    assert 59 <= len([k for k in got if k[0] == "canary"]) <= 61
    assert all(s.requests <= 11 for s in got.values())
    assert got[("canary", -10.0)].requests == 10  # one request per second, kept in the last windows


def test_a_cumulative_point_after_a_months_long_silence_is_bounded_too() -> None:
    agg = OtlpAggregator(grace_s=0, max_spread_windows=60)

    def send(t: float, n: int) -> Outcome:
        req = body(resource(counter("orders", npoint(t, n, start=T0)), version=CANARY))
        return agg.add(decode_protobuf(req), ROUTES, now=T0 + 1e7)

    send(T0 + 1, 0)
    send(T0 + 12, 11)
    out = send(T0 + 6e6, 6_000_000)
    assert out.accepted == 1
    assert agg.stats()["open_windows"] <= 61
    got = samples(out)
    assert got[("canary", 6e6 - 10)].gauges["orders"] == pytest.approx(10, rel=0.01)  # its rate, not 6e6
