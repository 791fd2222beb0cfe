"""OTLP ingest benchmark: ``python -m bench.otlp_bench``.

1. **Capture** real payloads: two OpenTelemetry SDK MeterProviders (canary and baseline of one
   service; an ``http.server.request.duration`` histogram over routes x methods x status codes, a
   counter, an up-down counter, an observable gauge) export over OTLP/HTTP every 100 ms to a tiny
   capturing aiohttp server while seeded synthetic requests are recorded.
2. **Replay** them, per deploy under its own ``service.name``, with shifted timestamps (and cumulative
   values carried over, so every series stays monotonic), through the real guardrail server
   (``guardrail.main.build_app``: HTTP handler, SqlStore on SQLite, engine and judge) from a separate
   client process. Throughput is data points per CPU-second of the server process (= per core: the
   server is one event loop plus the SQLite thread), median of ``--runs``.
3. **Breakdown** in-process: protobuf and OTLP/JSON decoding alone, decoding + the pure aggregator.
4. **Memory** of the aggregator per active deploy (tracemalloc, after ``gc``) at increasing request
   counts: it is bounded by series and open windows, not by requests.

Seeded (the synthetic requests); the SDK stamps real time, so payload bytes differ run to run but not
their shape. Writes ``otlp.md`` and ``otlp.json`` into ``--out`` (default bench/results).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import math
import multiprocessing
import os
import pickle
import platform
import random
import statistics
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from google.protobuf import json_format
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

from guardrail.adapters.http.routes import ENGINE
from guardrail.adapters.otlp import decode_json, decode_protobuf
from guardrail.config import Settings
from guardrail.main import build_app
from guardrail.service.otlp_ingest import DeployRoute, OtlpAggregator

DEFAULT_OUT = Path(__file__).resolve().parent / "results"
DEFAULT_SEED = 20240601
TOKEN = "bench-token"
ENV = "production"
NEW, OLD = "2.0.0", "1.9.0"
EXPORT_MS = 100
INTERVAL_S = 1.0  # the deploys' analysis interval: ten exports per window and process
BUCKETS_S = [0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1, 2.5, 5]
ROUTES = ("/cart", "/checkout", "/pay", "/search")


# --- 1. capture --------------------------------------------------------------------------------------


async def capture(seed: int, seconds: float) -> list[bytes]:
    """Protobuf bodies the real SDK exporter sends, in arrival order."""
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.metrics import CallbackOptions, Observation
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
    from opentelemetry.sdk.resources import Resource

    bodies: list[bytes] = []

    async def receive(request: web.Request) -> web.Response:
        assert request.content_type == "application/x-protobuf"
        bodies.append(await request.read())
        return web.Response(body=b"", content_type="application/x-protobuf")

    app = web.Application()
    app.router.add_post("/v1/metrics", receive)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    endpoint = f"http://127.0.0.1:{runner.addresses[0][1]}/v1/metrics"
    rng = random.Random(seed)

    def pool(options: CallbackOptions) -> list[Observation]:
        return [Observation(3.0 + rng.random())]

    providers = []
    for version in (NEW, OLD):
        resource = Resource.create(
            {"service.name": "bench", "service.version": version, "deployment.environment.name": ENV}
        )
        reader = PeriodicExportingMetricReader(
            OTLPMetricExporter(endpoint=endpoint, timeout=5), export_interval_millis=EXPORT_MS
        )
        provider = MeterProvider(resource=resource, metric_readers=[reader])
        meter = provider.get_meter("bench.otlp")
        instruments = (
            meter.create_histogram(
                "http.server.request.duration", unit="s", explicit_bucket_boundaries_advisory=BUCKETS_S
            ),
            meter.create_counter("orders.placed"),
            meter.create_up_down_counter("http.server.active_requests"),
        )
        meter.create_observable_gauge("db.pool.in_use", callbacks=[pool])
        providers.append((provider, instruments))
    t_end = time.monotonic() + seconds
    while time.monotonic() < t_end:
        for _, (duration, orders, active) in providers:
            for _ in range(50):
                route = rng.choice(ROUTES)
                status = 500 if rng.random() < 0.02 else (404 if rng.random() < 0.05 else 200)
                method = "POST" if route in ("/checkout", "/pay") else "GET"
                attrs = {
                    "http.request.method": method,
                    "http.route": route,
                    "http.response.status_code": status,
                }
                duration.record(rng.lognormvariate(math.log(0.08), 0.6), attrs)
                orders.add(1, {"http.route": route})
            active.add(rng.choice((-1, 1)))
        await asyncio.sleep(0.01)
    loop = asyncio.get_running_loop()
    await asyncio.gather(*(loop.run_in_executor(None, p.shutdown) for p, _ in providers))
    await runner.cleanup()
    return bodies


# --- 2. replay payloads ------------------------------------------------------------------------------


def _points(request: ExportMetricsServiceRequest) -> list[tuple[str, Any, Any]]:
    """(process version, metric, point) of every data point."""
    out = []
    for rm in request.resource_metrics:
        version = next(kv.value.string_value for kv in rm.resource.attributes if kv.key == "service.version")
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                kind = m.WhichOneof("data")
                for p in getattr(m, kind).data_points:
                    out.append((version, m, p))
    return out


def _series_key(version: str, metric: Any, point: Any) -> tuple[Any, ...]:
    return (version, metric.name, tuple((kv.key, kv.value.SerializeToString()) for kv in point.attributes))


def replay_streams(
    bodies: Sequence[bytes], deploys: int, requests_per_deploy: int, start_s: float
) -> tuple[list[list[bytes]], int]:
    """Per deploy, ``requests_per_deploy`` bodies: the capture cycled, under ``service.name``
    ``bench-{i}``, timestamps shifted to start at ``start_s``, cumulative values carried over from
    one cycle to the next. The canary process's exports are sent for both tracks (the baseline's
    copy relabelled): replaying the same data over and over would otherwise turn a chance difference
    between two captured processes into a "significant" regression and roll the deploys back.
    Returns the streams and the data points per stream."""
    captured = []
    for b in bodies:  # the canary process's exports, each sent for both tracks (see the docstring)
        r = ExportMetricsServiceRequest.FromString(b)
        points = _points(r)
        if points and points[0][0] == NEW:
            captured.append(r)
            twin = ExportMetricsServiceRequest()
            twin.CopyFrom(r)
            for kv in twin.resource_metrics[0].resource.attributes:
                if kv.key == "service.version":
                    kv.value.string_value = OLD
                elif kv.key == "service.instance.id":
                    kv.value.string_value += "-baseline"
            captured.append(twin)
    times = [min(p.time_unix_nano for _, _, p in _points(r)) for r in captured]
    order = sorted(range(len(captured)), key=times.__getitem__)
    captured = [captured[i] for i in order]
    t_first = min(times)
    span = max(times) - t_first + EXPORT_MS * 1_000_000
    final: dict[tuple[Any, ...], Any] = {}  # each cumulative series' last point
    for r in captured:
        for version, m, p in _points(r):
            if m.WhichOneof("data") == "histogram" or (m.WhichOneof("data") == "sum" and m.sum.is_monotonic):
                final[_series_key(version, m, p)] = p
    shift0 = round(start_s * 1e9) - t_first
    streams: list[list[bytes]] = []
    points = 0
    for d in range(deploys):
        stream = []
        for i in range(requests_per_deploy):
            cycle, j = divmod(i, len(captured))
            r = ExportMetricsServiceRequest()
            r.CopyFrom(captured[j])
            for rm in r.resource_metrics:
                for kv in rm.resource.attributes:
                    if kv.key == "service.name":
                        kv.value.string_value = f"bench-{d}"
            for version, m, p in _points(r):
                p.time_unix_nano += shift0 + cycle * span
                if p.start_time_unix_nano:
                    p.start_time_unix_nano += shift0  # the same series in every cycle
                last = final.get(_series_key(version, m, p))
                if cycle and last is not None:
                    if m.WhichOneof("data") == "histogram":
                        p.count += cycle * last.count
                        p.sum += cycle * last.sum
                        for b in range(len(p.bucket_counts)):
                            p.bucket_counts[b] += cycle * last.bucket_counts[b]
                    elif p.WhichOneof("value") == "as_int":
                        p.as_int += cycle * last.as_int
                    else:
                        p.as_double += cycle * last.as_double
            stream.append(r.SerializeToString())
            if d == 0:
                points += len(_points(r))
        streams.append(stream)
    return streams, points


# --- the HTTP run: the server here, the client in another process ---------------------------------------


def _client(url: str, streams_file: str, queue: Any, go: Any) -> None:
    """Load the streams, say ready, wait for go; then send each deploy's stream in order
    (concurrently across deploys) and report the wall time and the status codes."""
    streams: list[list[bytes]] = pickle.loads(Path(streams_file).read_bytes())

    async def run() -> tuple[float, dict[int, int]]:
        codes: dict[int, int] = {}
        headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/x-protobuf"}
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=len(streams))) as s:

            async def send(stream: list[bytes]) -> None:
                for body in stream:
                    async with s.post(url, data=body, headers=headers) as r:
                        await r.read()
                        codes[r.status] = codes.get(r.status, 0) + 1

            queue.put("ready")
            go.wait()
            t0 = time.perf_counter()
            await asyncio.gather(*(send(st) for st in streams))
            return time.perf_counter() - t0, codes

    queue.put(asyncio.run(run()))


def _total(counter: Any, **labels: str) -> float:
    """Sum of a prometheus_client counter's ``_total`` samples matching ``labels``."""
    return sum(
        s.value
        for metric in counter.collect()
        for s in metric.samples
        if s.name.endswith("_total") and all(s.labels.get(k) == v for k, v in labels.items())
    )


def _rss_kib() -> int:
    with contextlib.suppress(OSError), open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


@dataclass
class HttpRun:
    interval_s: float
    points: int
    requests: int
    server_cpu_s: float
    wall_s: float
    accepted: float
    rejected: float
    windows: int
    rss_before_kib: int
    rss_after_kib: int

    @property
    def points_per_cpu_s(self) -> float:
        return self.points / self.server_cpu_s

    @property
    def points_per_wall_s(self) -> float:
        return self.points / self.wall_s

    def as_dict(self) -> dict[str, Any]:
        return {
            **self.__dict__,
            "points_per_cpu_s": self.points_per_cpu_s,
            "points_per_wall_s": self.points_per_wall_s,
        }


@dataclass(frozen=True)
class Replay:
    streams_file: Path
    deploys: int
    requests_per_deploy: int
    points_per_stream: int
    start_s: float


def prepare(bodies: list[bytes], deploys: int, requests_per_deploy: int, tmp: Path) -> Replay:
    """The replay streams, built once (each run gets fresh deploys with the same start)."""
    span_s = requests_per_deploy * EXPORT_MS / 1000 / 2 + 10  # two bodies (tracks) per 100 ms
    start_s = math.floor(time.time() - span_s - 120)
    streams, points = replay_streams(bodies, deploys, requests_per_deploy, start_s)
    path = tmp / "streams.pickle"
    path.write_bytes(pickle.dumps(streams))
    return Replay(path, deploys, requests_per_deploy, points, start_s)


async def http_run(replay: Replay, interval_s: float, tmp: Path, run: str) -> HttpRun:
    """One run against a fresh server: mark the deploys, replay from the client process, measure
    the server process's CPU time while the client sends."""
    settings = Settings.model_validate(
        {
            "database_url": f"sqlite+aiosqlite:///{tmp / f'bench-{run}.db'}",
            "tokens": [{"name": "bench", "token": TOKEN, "scopes": ["ci", "read"]}],
            "server": {"max_body_bytes": 4 * 1024 * 1024},
        }
    )
    app = await build_app(settings)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as s:
            for d in range(replay.deploys):
                marker = {
                    "service": f"bench-{d}",
                    "environment": ENV,
                    "version": NEW,
                    "previous_version": OLD,
                    "commit": "bench",
                    "change_type": "feature",
                    "strategy": "canary",
                    # identical tracks: the judge passes, and a step this long never advances
                    "steps": [{"weight": 50, "min_duration_s": 10**6}, {"weight": 100}],
                    "analysis": {"interval_s": interval_s, "max_duration_s": 10**6},
                    "started_at": replay.start_s - 1,
                }
                async with s.post(f"{url}/api/v1/deploys", json=marker) as r:
                    assert r.status == 201, await r.text()
        ctx = multiprocessing.get_context("spawn")
        queue, go = ctx.Queue(), ctx.Event()
        proc = ctx.Process(target=_client, args=(f"{url}/v1/metrics", str(replay.streams_file), queue, go))
        proc.start()
        loop = asyncio.get_running_loop()
        assert await loop.run_in_executor(None, queue.get) == "ready"
        gc.collect()
        rss0 = _rss_kib()
        cpu0 = time.process_time()
        go.set()
        wall, codes = await loop.run_in_executor(None, queue.get)
        cpu = time.process_time() - cpu0
        await loop.run_in_executor(None, proc.join)
        requests = replay.deploys * replay.requests_per_deploy
        assert codes == {200: requests}, codes
        telemetry = app[ENGINE].telemetry
        return HttpRun(
            interval_s,
            replay.points_per_stream * replay.deploys,
            requests,
            cpu,
            wall,
            _total(telemetry.otlp_points, result="accepted"),
            _total(telemetry.otlp_rejected),
            int(_total(telemetry.samples)),
            rss0,
            _rss_kib(),
        )
    finally:
        await runner.cleanup()


# --- 3. breakdown and 4. memory, in-process ----------------------------------------------------------


def breakdown(bodies: list[bytes], requests: int, repeat: int) -> dict[str, float]:
    """Points per CPU-second, one deploy's stream: protobuf decoding, OTLP/JSON decoding (the same
    requests as ``json_format`` writes them), protobuf decoding + aggregation."""
    [stream], points = replay_streams(bodies, 1, requests, time.time() - requests - 600)
    as_json = [json_format.MessageToJson(ExportMetricsServiceRequest.FromString(b)).encode() for b in stream]

    def timed(fn: Any) -> float:
        times = []
        for _ in range(repeat):
            t0 = time.process_time()
            fn()
            times.append(time.process_time() - t0)
        return points / statistics.median(times)

    routes = {("bench-0", ENV): [DeployRoute("d0", "bench-0", ENV, NEW, OLD, 1.0)]}
    decoded = [decode_protobuf(b) for b in stream]

    def aggregate() -> None:
        agg = OtlpAggregator()
        for resources in decoded:
            agg.add(resources, routes, now=time.time())

    def both() -> None:
        agg = OtlpAggregator()
        for b in stream:
            agg.add(decode_protobuf(b), routes, now=time.time())

    return {
        "decode protobuf": timed(lambda: [decode_protobuf(b) for b in stream]),
        "decode OTLP/JSON": timed(lambda: [decode_json(b) for b in as_json]),
        "aggregate (decoded ahead, 1 s windows)": timed(aggregate),
        "decode protobuf + aggregate": timed(both),
    }


def memory(bodies: list[bytes], deploys: int, checkpoints: Sequence[int]) -> list[dict[str, Any]]:
    """tracemalloc bytes held by the aggregator per deploy after N requests per deploy (1 s windows)."""
    streams, _ = replay_streams(bodies, deploys, max(checkpoints), time.time() - max(checkpoints) - 600)
    routes = {
        (f"bench-{d}", ENV): [DeployRoute(f"d{d}", f"bench-{d}", ENV, NEW, OLD, 1.0)] for d in range(deploys)
    }
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    agg = OtlpAggregator()
    rows = []
    sent = 0
    for n in checkpoints:
        for i in range(sent, n):
            for d in range(deploys):
                agg.add(decode_protobuf(streams[d][i]), routes, now=time.time())
        sent = n
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - base
        stats = agg.stats()
        rows.append(
            {
                "deploys": deploys,
                "requests_per_deploy": n,
                "bytes_per_deploy": round(held / deploys),
                "series_per_deploy": stats["series"] / deploys,
                "open_windows_per_deploy": stats["open_windows"] / deploys,
            }
        )
    tracemalloc.stop()
    return rows


# --- report --------------------------------------------------------------------------------------------


def _fmt(x: float) -> str:
    return f"{x:,.0f}"


def _table(title: str, block: dict[str, Any]) -> list[str]:
    runs = block["runs"]
    lines = [
        f"### {title}",
        "",
        "| run | data points / s per core (server CPU) | data points / s wall | requests / s wall | server CPU s | "
        "accepted | rejected | windows analysed |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(runs):
        lines.append(
            f"| {i + 1} | {_fmt(r['points_per_cpu_s'])} | {_fmt(r['points_per_wall_s'])} | "
            f"{_fmt(r['requests'] / r['wall_s'])} | {r['server_cpu_s']:.2f} | {r['accepted']:,.0f} | "
            f"{r['rejected']:,.0f} | {r['windows']:,} |"
        )
    lines += [
        f"| **median** | **{_fmt(block['median_points_per_cpu_s'])}** | **{_fmt(block['median_points_per_wall_s'])}** | "
        f"**{_fmt(block['median_requests_per_wall_s'])}** | | | | |",
        "",
    ]
    return lines


def write(out: Path, result: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "otlp.json").write_text(json.dumps(result, indent=2) + "\n")
    cap, h = result["capture"], result["http"]
    lines = [
        "# OTLP ingest benchmark",
        "",
        "Generated by `python -m bench.otlp_bench`; the method is in the module docstring.",
        "",
        f"Machine: {result['machine']}. Seed {result['seed']}. Total time {result['seconds']:.0f} s.",
        "",
        "## Payloads",
        "",
        f"{cap['bodies']} protobuf bodies captured from the real OpenTelemetry SDK {cap['sdk']} "
        f"`OTLPMetricExporter` (2 processes, export every {EXPORT_MS} ms): {cap['points_per_body']:.1f} data "
        f"points and {cap['bytes_per_body']:,.0f} bytes per body on average, {cap['series_per_process']} "
        f"series per process (the duration histogram over {len(ROUTES)} routes x status codes, a counter per "
        "route, an up-down counter, a gauge).",
        "",
        "## Throughput through the real server",
        "",
        f"HTTP handler, auth, decoding, aggregation, SqlStore on SQLite, engine and judge; {h['deploys']} "
        f"active deploys, {h['requests_per_deploy']} requests each per run ({h['requests']:,} requests, "
        f"{h['points']:,} data points); the client in another process. Per core = per CPU-second of the "
        "server process (its event loop and the SQLite thread). On a small shared machine the spread "
        "between runs is wide (other work competes for the same cores and caches): quote the medians.",
        "",
        *_table(
            "Receiver alone (60 s windows: none completes during a run, the engine is not called)",
            h["receiver"],
        ),
        *_table(
            "With analysis (1 s windows: every deploy hands the engine a window pair per second of data)",
            h["analysis"],
        ),
        f"Server RSS: {h['rss_first_kib'] / 1024:.0f} MiB before the first run, {h['rss_last_kib'] / 1024:.0f} MiB "
        "after the last (the whole benchmark process: SDK, captured payloads, engine, SQLAlchemy).",
        "",
        "## Where the receiver's time goes (in-process, one deploy's stream, median of 3)",
        "",
        "| step | data points / CPU-second |",
        "|---|---|",
        *(f"| {k} | {_fmt(v)} |" for k, v in result["breakdown"].items()),
        "",
        "## Memory of the aggregator per active deploy (tracemalloc, after gc)",
        "",
        "| deploys | requests per deploy | bytes per deploy | series per deploy | open windows per deploy |",
        "|---|---|---|---|---|",
        *(
            f"| {m['deploys']} | {m['requests_per_deploy']:,} | {m['bytes_per_deploy']:,} | "
            f"{m['series_per_deploy']:.0f} | {m['open_windows_per_deploy']:.1f} |"
            for m in result["memory"]
        ),
        "",
        "Bounded by series (the differencing state: one entry per series) and open windows (the grace "
        "plus about one interval of data time), not by the number of requests. The small rise from the "
        "first hundred requests on is the cumulative counts growing past 256 (Python shares small ints, "
        "larger ones take 28-32 bytes each): at most series x buckets integers, then flat.",
        "",
    ]
    (out / "otlp.md").write_text("\n".join(lines))


def _summary(runs: list[HttpRun]) -> dict[str, Any]:
    return {
        "runs": [r.as_dict() for r in runs],
        "median_points_per_cpu_s": statistics.median(r.points_per_cpu_s for r in runs),
        "median_points_per_wall_s": statistics.median(r.points_per_wall_s for r in runs),
        "median_requests_per_wall_s": statistics.median(r.requests / r.wall_s for r in runs),
    }


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    from importlib.metadata import version

    t0 = time.perf_counter()
    random.seed(args.seed)
    bodies = await capture(args.seed, args.capture_s)
    decoded = [ExportMetricsServiceRequest.FromString(b) for b in bodies]
    series = {_series_key(v, m, p) for r in decoded for v, m, p in _points(r)}
    capture_info = {
        "bodies": len(bodies),
        "sdk": version("opentelemetry-sdk"),
        "points_per_body": statistics.mean(len(_points(r)) for r in decoded),
        "bytes_per_body": statistics.mean(len(b) for b in bodies),
        "series_per_process": len(series) // 2,
    }
    print(
        f"captured {len(bodies)} bodies, {capture_info['points_per_body']:.1f} points each", file=sys.stderr
    )
    runs: dict[float, list[HttpRun]] = {60.0: [], 1.0: []}
    with tempfile.TemporaryDirectory() as tmp:
        replay = prepare(bodies, args.deploys, args.requests, Path(tmp))
        for i in range(args.runs):
            for interval in runs:
                r = await http_run(replay, interval, Path(tmp), f"{i}-{interval:g}")
                print(
                    f"{interval:g} s windows, run {i + 1}: {r.points_per_cpu_s:,.0f} points/s per core",
                    file=sys.stderr,
                )
                runs[interval].append(r)
    every = [r for rs in runs.values() for r in rs]
    result: dict[str, Any] = {
        "seed": args.seed,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "capture": capture_info,
        "http": {
            "deploys": args.deploys,
            "requests_per_deploy": args.requests,
            "requests": every[0].requests,
            "points": every[0].points,
            "receiver": _summary(runs[60.0]),
            "analysis": _summary(runs[1.0]),
            "rss_first_kib": every[0].rss_before_kib,
            "rss_last_kib": every[-1].rss_after_kib,
        },
    }
    t1 = time.perf_counter()
    result["breakdown"] = breakdown(bodies, args.requests, repeat=3)
    t2 = time.perf_counter()
    result["memory"] = [*memory(bodies, 1, [100, 300, 1000]), *memory(bodies, 20, [20, 60])]
    print(f"breakdown {t2 - t1:.1f} s, memory {time.perf_counter() - t2:.1f} s", file=sys.stderr)
    result["seconds"] = time.perf_counter() - t0
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.otlp_bench", description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=DEFAULT_SEED)
    p.add_argument("--deploys", type=int, default=10, help="active deploys in the HTTP runs")
    p.add_argument("--requests", type=int, default=120, help="requests per deploy per HTTP run")
    p.add_argument("--runs", type=int, default=3, help="runs of each configuration")
    p.add_argument("--capture-s", type=float, default=2.0, help="seconds of SDK capture")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    result = asyncio.run(main_async(args))
    write(args.out, result)
    h = result["http"]
    print(
        f"OTLP ingest (median of {args.runs}): receiver {h['receiver']['median_points_per_cpu_s']:,.0f} data "
        f"points/s per core, with 1 s analysis windows {h['analysis']['median_points_per_cpu_s']:,.0f}; "
        f"aggregator {result['memory'][-1]['bytes_per_deploy']:,} bytes per deploy; {result['seconds']:.0f} s; "
        f"wrote {args.out / 'otlp.md'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
