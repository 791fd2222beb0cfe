"""PrometheusMetricSource against a real Prometheus scraping real sample service processes: counts
match what the load generator got answers for, counter resets, histogram buckets, both naming
conventions, gauges, long queries, and the errors (bad query, Prometheus down, no answer, 5xx)."""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from dataclasses import dataclass

import pytest
from aiohttp import web

from examples.app.load import LoadGenerator, LoadResult, run_load
from examples.app.service import BUCKETS_S
from guardrail.adapters.sources.prometheus import PrometheusMetricSource
from guardrail.config import PrometheusQueries
from guardrail.domain.errors import SourceUnavailableError, ValidationError
from guardrail.domain.model import Sample, Track
from guardrail.ports import SourceQuery
from tests.integration.conftest import PrometheusServer, ScrapedPair

pytestmark = pytest.mark.integration


def query(start: float, end: float, interval: float = 1.0, **prometheus: object) -> SourceQuery:
    return SourceQuery("checkout", "production", "1.4.2", "1.4.1", start, end, interval,
                       overrides={"prometheus": prometheus} if prometheus else {})


def totals(samples: list[Sample], track: Track) -> tuple[int, int]:
    mine = [s for s in samples if s.track is track]
    return sum(s.requests for s in mine), sum(s.errors for s in mine)


@dataclass
class Window:
    start: float
    end: float
    load: LoadResult
    baseline_url: str
    canary_url: str


def _total(pair: ScrapedPair) -> float:
    r = pair.prometheus.query('sum(http_requests_total{service="checkout"})')
    return float(r[0]["value"][1]) if r else 0.0


def quiet_start(pair: ScrapedPair) -> float:
    """A whole second after every earlier request was scraped (other tests load the same processes):
    the value at that boundary includes all of them, and none of what follows."""
    pair.prometheus.wait_scraped(2, after=time.time())
    start = float(math.ceil(time.time()))
    time.sleep(start + 0.05 - time.time())
    return start


@pytest.fixture(scope="module")
def window(scraped_pair: ScrapedPair) -> Window:
    """4 s of load at 200 rps, 70% baseline / 30% canary, fully scraped; the window around it."""
    start = quiet_start(scraped_pair)
    before = _total(scraped_pair)
    b, c = scraped_pair.baseline.work_url, scraped_pair.canary.work_url
    result = asyncio.run(run_load([b, c], rps=200, duration_s=4, weights=[70, 30]))
    answered = result.answered(b) + result.answered(c)
    assert answered == 800, result.as_dict()
    scraped_pair.prometheus.wait_for('sum(http_requests_total{service="checkout"})', before + answered)
    time.sleep(1.1)  # the range's last point must be at or after that scrape
    return Window(start, time.time(), result, b, c)


async def test_counts_match_what_the_load_generator_sent(scraped_pair: ScrapedPair, window: Window) -> None:
    src = PrometheusMetricSource(scraped_pair.prometheus.url)
    try:
        samples = await src.fetch(query(window.start, window.end))
    finally:
        await src.close()
    assert totals(samples, Track.BASELINE) == (window.load.answered(window.baseline_url),
                                                window.load.errors(window.baseline_url))
    assert totals(samples, Track.CANARY) == (window.load.answered(window.canary_url),
                                              window.load.errors(window.canary_url))
    assert all(s.end - s.start == 1.0 and (s.start - window.start) % 1.0 == 0 for s in samples)
    assert {s.track for s in samples} == {Track.BASELINE, Track.CANARY}


async def test_histogram_buckets_are_per_bucket_increases_in_seconds(scraped_pair: ScrapedPair, window: Window) -> None:
    src = PrometheusMetricSource(scraped_pair.prometheus.url)
    try:
        samples = await src.fetch(query(window.start, window.end))
    finally:
        await src.close()
    with_traffic = [s for s in samples if s.requests > 0]
    assert with_traffic
    for s in with_traffic:
        assert s.latency is not None
        assert s.latency.bounds == tuple(float(b) for b in BUCKETS_S)
        assert s.latency.total == s.requests  # the +Inf bucket is last and every request is in one bucket
    canary = [s.latency for s in with_traffic if s.track is Track.CANARY and s.latency]
    merged = [sum(h.counts[i] for h in canary) for i in range(len(BUCKETS_S) + 1)]
    # lognormal(median 0.1 s, sigma 0.5): the busiest buckets sit around the median
    assert max(range(len(merged)), key=merged.__getitem__) in (4, 5, 6, 7)


async def test_opentelemetry_names_with_the_track_attribute(scraped_pair: ScrapedPair, window: Window) -> None:
    src = PrometheusMetricSource(scraped_pair.prometheus.url, queries=PrometheusQueries(convention="otel"))
    try:
        samples = await src.fetch(query(window.start, window.end))
    finally:
        await src.close()
    assert totals(samples, Track.CANARY) == (window.load.answered(window.canary_url),
                                              window.load.errors(window.canary_url))
    assert totals(samples, Track.BASELINE)[0] == window.load.answered(window.baseline_url)
    assert all(s.latency is not None and s.latency.total == s.requests for s in samples)


async def test_a_version_label_tells_the_tracks_apart(scraped_pair: ScrapedPair, window: Window) -> None:
    src = PrometheusMetricSource(scraped_pair.prometheus.url)
    try:
        samples = await src.fetch(query(window.start, window.end, track_label="version"))
        with pytest.raises(ValidationError, match="cannot tell"):
            await src.fetch(SourceQuery("checkout", "production", "1.4.2", "1.4.2", window.start, window.end, 1.0,
                                        {"prometheus": {"track_label": "version"}}))
    finally:
        await src.close()
    assert totals(samples, Track.CANARY)[0] == window.load.answered(window.canary_url)
    assert totals(samples, Track.BASELINE)[0] == window.load.answered(window.baseline_url)


async def test_gauges_are_read_per_window_and_track(scraped_pair: ScrapedPair, window: Window) -> None:
    gauges = {"db_pool": "max by ($track_label)(db_pool_in_use$selector)"}
    src = PrometheusMetricSource(scraped_pair.prometheus.url, queries=PrometheusQueries(gauges=gauges))
    try:
        samples = await src.fetch(query(window.start, window.end))
    finally:
        await src.close()
    busy = [s for s in samples if s.requests > 0]
    assert busy and all("db_pool" in s.gauges and s.gauges["db_pool"] > 0 for s in busy)


async def test_long_queries_go_by_post_and_post_always_works(scraped_pair: ScrapedPair, window: Window) -> None:
    noise = "|".join(f"other-service-{i}" for i in range(120))
    selector = '{service=~"$service|' + noise + '"}'
    assert len(selector) > 1500
    for method in ("auto", "POST"):
        src = PrometheusMetricSource(scraped_pair.prometheus.url, method=method)
        try:
            samples = await src.fetch(query(window.start, window.end, selector=selector))
        finally:
            await src.close()
        assert totals(samples, Track.CANARY)[0] == window.load.answered(window.canary_url)


async def test_a_track_without_data_has_no_samples(scraped_pair: ScrapedPair, window: Window) -> None:
    src = PrometheusMetricSource(scraped_pair.prometheus.url)
    try:
        nothing = await src.fetch(query(window.start, window.end, selector='{service="no-such-service"}'))
        before = await src.fetch(query(window.start - 3600, window.start - 3000, interval=60))
    finally:
        await src.close()
    assert nothing == [] and before == []


async def test_a_restarted_process_resets_its_counters_without_negative_or_spiking_windows(
    scraped_pair: ScrapedPair,
) -> None:
    pair = scraped_pair
    start = await asyncio.to_thread(quiet_start, pair)
    b, c = pair.baseline.work_url, pair.canary.work_url
    gen = LoadGenerator([b, c], rps=200, weights=[50, 50])
    task = asyncio.create_task(gen.run(6))
    await asyncio.sleep(2.5)
    restarted_at = time.time()
    await asyncio.to_thread(pair.canary.restart)  # SIGKILL, then the same port again: counters from zero
    result = await task
    await asyncio.sleep(2.5)  # two more scrapes
    src = PrometheusMetricSource(pair.prometheus.url)
    try:
        samples = await src.fetch(query(start, time.time()))
    finally:
        await src.close()
    canary = [s for s in samples if s.track is Track.CANARY]
    sent = result.answered(c)
    got = sum(s.requests for s in canary)
    # lost: what the killed process counted after its last scrape, and the windows touching the gap
    # while it was down (not attributable to a window): a few seconds of the canary's 100 rps
    assert sent - 400 <= got <= sent, (sent, got, result.as_dict())
    assert max(s.requests for s in canary) <= 100 * 2  # no spike: the new counter is not diffed against the old
    assert any(s.start > restarted_at + 1 and s.requests > 50 for s in canary)  # counting again after the restart
    assert totals(samples, Track.BASELINE)[0] == result.answered(b)


async def test_a_bad_query_is_a_validation_error_naming_the_query(scraped_pair: ScrapedPair, window: Window) -> None:
    src = PrometheusMetricSource(scraped_pair.prometheus.url)
    try:
        with pytest.raises(ValidationError) as bad:  # HTTP 400: does not parse
            await src.fetch(query(window.start, window.end, requests="rate(http_requests_total$selector"))
        assert "rate(http_requests_total{" in bad.value.detail and "parse error" in bad.value.detail
        assert "HTTP 400" in bad.value.detail
        dup = 'label_replace(http_requests_total, "code", "x", "", "")'
        with pytest.raises(ValidationError) as cannot:  # HTTP 422: parses, cannot execute
            await src.instant(dup)
        assert dup in cannot.value.detail and "HTTP 422" in cannot.value.detail
        assert "same labelset" in cannot.value.detail
    finally:
        await src.close()


async def test_prometheus_stopped_is_source_unavailable_within_the_timeout(
    prometheus_binaries: tuple[str, str], tmp_path
) -> None:
    prom = PrometheusServer(prometheus_binaries[0], tmp_path / "tsdb", []).start()
    src = PrometheusMetricSource(prom.url, timeout_s=2, retries=2, backoff_s=0.1)
    try:
        assert await src.fetch(query(time.time() - 60, time.time())) == []  # up, and empty
        prom.stop()
        t0 = time.monotonic()
        with pytest.raises(SourceUnavailableError, match="cannot reach Prometheus") as e:
            await src.fetch(query(time.time() - 60, time.time()))
        assert time.monotonic() - t0 < 2
        assert "3 attempts" in e.value.detail
    finally:
        prom.stop()
        await src.close()


async def test_no_answer_is_source_unavailable_after_the_timeout_and_retries() -> None:
    async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(30)  # accepts, reads nothing, never answers

    server = await asyncio.start_server(hang, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    src = PrometheusMetricSource(f"http://127.0.0.1:{port}", timeout_s=0.3, retries=1, backoff_s=0.05)
    t0 = time.monotonic()
    try:
        with pytest.raises(SourceUnavailableError, match=r"no answer from Prometheus .* within 0\.3 s"):
            await src.fetch(query(time.time() - 60, time.time()))
    finally:
        await src.close()
        server.close()
    assert 0.6 <= time.monotonic() - t0 < 2.0


async def test_5xx_is_retried_with_backoff_then_source_unavailable(aiohttp_server) -> None:
    calls: list[float] = []

    async def overloaded(request: web.Request) -> web.Response:
        calls.append(time.monotonic())
        return web.json_response({"status": "error", "errorType": "unavailable", "error": "too many queries"},
                                 status=503)

    app = web.Application()
    app.router.add_route("*", "/api/v1/query_range", overloaded)
    server = await aiohttp_server(app, host="127.0.0.1")
    src = PrometheusMetricSource(str(server.make_url("/")), timeout_s=1, retries=3, backoff_s=0.05)
    try:
        with pytest.raises(SourceUnavailableError, match="HTTP 503: unavailable: too many queries"):
            await src.fetch(query(time.time() - 60, time.time()))
    finally:
        await src.close()
    assert len(calls) == 4
    gaps = [b - a for a, b in itertools.pairwise(calls)]
    assert gaps[0] >= 0.025 and gaps[1] >= 0.05 and gaps[2] >= 0.1  # doubling backoff, jittered in [c/2, c]


# --- the arithmetic alone (no server) ----------------------------------------------------------------


def _series(points: dict[int, float], start: float = 0.0, interval: float = 10.0) -> dict:
    return {"metric": {}, "values": [[start + k * interval, str(v)] for k, v in sorted(points.items())]}


def test_increases_difference_boundaries_and_read_a_decrease_as_a_reset() -> None:
    from guardrail.adapters.sources.prometheus import _increases

    # 100 -> 150 -> (restart) 20 -> 70: the new process's count is the increase of the reset window
    assert _increases(_series({0: 100, 1: 150, 2: 20, 3: 70}), 0, 10, 3, False) == [(0, 50), (1, 20), (2, 50)]


def test_windows_touching_a_gap_get_nothing_and_a_new_series_counts_from_zero() -> None:
    from guardrail.adapters.sources.prometheus import _increases

    # no point at boundary 2 (missed scrapes): windows 1 and 2 get nothing (when did the 40 happen?)
    assert _increases(_series({0: 100, 1: 150, 3: 190, 4: 200}), 0, 10, 4, False) == [(0, 50), (3, 10)]
    # no point at the start, but a value before it (a gap): the first window gets nothing
    assert _increases(_series({1: 130, 2: 160}), 0, 10, 2, True) == [(1, 30)]
    # never seen before: a new process (or a label value seen for the first time) counted from zero
    assert _increases(_series({2: 3, 3: 5}), 0, 10, 3, False) == [(1, 3), (2, 2)]


def test_cumulative_le_buckets_become_per_bucket_counts_with_inf_last() -> None:
    from guardrail.adapters.sources.prometheus import _histogram

    h = _histogram({0.1: 50.0, 0.5: 90.0, 1.0: 99.0, math.inf: 100.0, 0.0: 0.0})
    assert h is not None and h.bounds == (0.1, 0.5, 1.0) and h.counts == (50, 40, 9, 1)
    skewed = _histogram({0.1: 50.0, 0.5: 49.0, math.inf: 52.0})  # series from different scrapes: no negatives
    assert skewed is not None and skewed.counts == (50, 0, 2)
    assert _histogram({0.1: 5.0}) is None  # no +Inf bucket: not a histogram


def test_overrides_are_validated_and_name_the_key() -> None:
    src = PrometheusMetricSource("http://127.0.0.1:9")
    q = query(0, 60, selector='{job="$service"}', track_label="version")
    assert src.resolve(q).selector == '{job="$service"}' and src.resolve(q).track_label == "version"
    with pytest.raises(ValidationError) as e:
        src.resolve(query(0, 60, tracklabel="version"))
    assert e.value.field == "metrics.prometheus.tracklabel"
    with pytest.raises(ValidationError, match="not a regular expression"):
        src.resolve(query(0, 60, error_codes="5(("))
    with pytest.raises(ValidationError, match="http:// or https://"):
        PrometheusMetricSource("127.0.0.1:9090")
