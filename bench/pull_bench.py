"""Prometheus pull benchmark: ``python -m bench.pull_bench``.

Time per analysis step (fetch from a real Prometheus + ``Engine.ingest`` + the verdict) for 1, 10
and 100 concurrent deploys. Seeded history of the sample service (examples/app/history: 200 req/s
per service, 15 s resolution, 42 series per deploy) is written as OpenMetrics, backfilled with
``promtool tsdb create-blocks-from openmetrics`` into a temp data dir, and served by the
``prometheus`` binary on a free loopback port (no scraping). For each deploy count N, a fresh engine
(SqlStore on a temp SQLite file, a recording deploy adapter) records N canary deploys with
``metrics.source: prometheus`` and the real ``Poller`` (default concurrency 16) pulls them on a
manual clock: the first poll pulls 10 min of baseline history plus one window per deploy, then each
poll one 60-s window per deploy (one analysis step for all N). Reported: wall time of one step for
all N deploys (median and p90 over the steps), per-deploy fetch and ingest+verdict medians.

Data is the same for the same seed; the timings are of this machine (see the environment lines).
Writes ``pull.md`` and ``pull.json`` into ``--out`` (default bench/results).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from examples.app.history import T0, Deploy, write
from guardrail.adapters.db.migrate import upgrade
from guardrail.adapters.db.store import SqlStore
from guardrail.adapters.sources.prometheus import PrometheusMetricSource
from guardrail.config import Settings
from guardrail.domain.model import ChangeType, Sample, Step, Strategy
from guardrail.domain.records import AdapterRef, AnalysisSettings, Marker
from guardrail.ports import SourceQuery
from guardrail.service.engine import Engine, IngestResult
from guardrail.service.poller import Poller, PollSettings
from guardrail.testing import ManualClock, RecordingDeployAdapter

INTERVAL_S = 60.0
HISTORY_S = 600.0
SCRAPE_DELAY_S = 15.0
DEPLOY_AT = T0 + HISTORY_S


def percentile(xs: Sequence[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


@dataclass
class TimedSource:
    """The real source, with each fetch timed."""

    inner: PrometheusMetricSource
    name: str = "prometheus"
    seconds: list[float] = field(default_factory=list)

    async def fetch(self, query: SourceQuery) -> list[Sample]:
        t0 = time.perf_counter()
        try:
            return await self.inner.fetch(query)
        finally:
            self.seconds.append(time.perf_counter() - t0)


class TimedEngine:
    """The real engine, with each ingest (store + analysis + verdict + any action) timed."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.telemetry = engine.telemetry
        self.seconds: list[float] = []

    async def ingest(self, deploy_id: str, samples: Sequence[Sample]) -> IngestResult:
        t0 = time.perf_counter()
        try:
            return await self.engine.ingest(deploy_id, samples)
        finally:
            self.seconds.append(time.perf_counter() - t0)

    def __getattr__(self, name: str):  # active_deploys, events, note
        return getattr(self.engine, name)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_prometheus(binary: str, data: Path, port: int) -> subprocess.Popen:
    cfg = data.parent / "prometheus.yml"
    cfg.write_text('{"scrape_configs": []}')
    log = (data.parent / "prometheus.log").open("wb")
    proc = subprocess.Popen([binary, f"--config.file={cfg}", f"--storage.tsdb.path={data}",
                             f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=100y",
                             "--log.level=warn"], stdout=log, stderr=log)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"prometheus exited with {proc.returncode}; see {data.parent / 'prometheus.log'}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=1) as r:
                if r.status == 200:
                    return proc
        except OSError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError("prometheus not ready within 60 s")


def marker(service: str) -> Marker:
    return Marker(
        service=service, environment="production", version="1.4.2", previous_version="1.4.1", commit="bench",
        strategy=Strategy.CANARY, change_type=ChangeType.FEATURE, metrics_source="prometheus",
        adapter=AdapterRef("recording"),
        analysis=AnalysisSettings(interval_s=INTERVAL_S, max_duration_s=36_000),
        steps=(Step(weight=10, min_duration_s=36_000), Step(weight=100)),  # analysing all along
        started_at=DEPLOY_AT,
    )


async def run_n(url: str, n: int, steps: int, work: Path) -> dict[str, object]:
    db = f"sqlite+aiosqlite:///{work / f'bench-{n}.db'}"
    await upgrade(db)
    store = SqlStore(db)
    clock = ManualClock(DEPLOY_AT)
    adapter = RecordingDeployAdapter()
    engine = Engine(store=store, settings=Settings.model_validate({"allow_marker_adapters": True}),
                    adapter_factory=lambda name, cfg: adapter, clock=clock)
    source = TimedSource(PrometheusMetricSource(url, timeout_s=30))
    timed = TimedEngine(engine)
    poller = Poller(timed, source, clock=clock,  # type: ignore[arg-type]
                    settings=PollSettings(scrape_delay_s=SCRAPE_DELAY_S, history_s=HISTORY_S))
    try:
        for i in range(n):
            await engine.record_deploy(marker(f"svc-{i:03d}"))
        clock.now = DEPLOY_AT + INTERVAL_S + SCRAPE_DELAY_S
        t0 = time.perf_counter()
        first_samples = await poller.poll_once()
        first = time.perf_counter() - t0
        source.seconds.clear()
        timed.seconds.clear()
        walls, got = [], []
        for _ in range(steps):
            clock.advance(INTERVAL_S)
            t0 = time.perf_counter()
            got.append(await poller.poll_once())
            walls.append(time.perf_counter() - t0)
        active = [d for d in await engine.active_deploys()]
        assert all(g == 2 * n for g in got), f"expected {2 * n} samples per step, got {got}"
        assert len(active) == n, "a deploy finished during the benchmark"
        return {
            "deploys": n,
            "steps": steps,
            "first_step_s": round(first, 4),
            "first_step_samples": first_samples,
            "step_median_s": round(statistics.median(walls), 4),
            "step_p90_s": round(percentile(walls, 0.9), 4),
            "per_deploy_ms": round(1000 * statistics.median(walls) / n, 2),
            "fetch_median_ms": round(1000 * statistics.median(source.seconds), 2),
            "fetch_p90_ms": round(1000 * percentile(source.seconds, 0.9), 2),
            "ingest_median_ms": round(1000 * statistics.median(timed.seconds), 2),
            "ingest_p90_ms": round(1000 * percentile(timed.seconds, 0.9), 2),
            "windows_per_s": round(n * steps / sum(walls), 1),
        }
    finally:
        await source.inner.close()
        await engine.close()
        await store.close()


def render(meta: dict[str, object], rows: list[dict[str, object]]) -> str:
    lines = [
        "# Prometheus pull benchmark",
        "",
        "Generated by `python -m bench.pull_bench` (see its docstring). One analysis step = one 60-s window",
        "per deploy: the Poller's fetch from a real Prometheus (backfilled, seeded history) plus",
        "`Engine.ingest` (SQLite store, judge, verdict). Steps of all N deploys run concurrently",
        "(Poller concurrency 16).",
        "",
        "| deploys | step, all deploys: median s | p90 s | per deploy ms | fetch median ms (p90) | ingest+verdict median ms (p90) | windows/s | first step s (10 min history) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['deploys']} | {r['step_median_s']:.3f} | {r['step_p90_s']:.3f} | {r['per_deploy_ms']:.1f} | "
            f"{r['fetch_median_ms']:.1f} ({r['fetch_p90_ms']:.1f}) | {r['ingest_median_ms']:.1f} ({r['ingest_p90_ms']:.1f}) "
            f"| {r['windows_per_s']:.0f} | {r['first_step_s']:.2f} |"
        )
    lines += ["", "Environment and parameters:", ""]
    lines += [f"- {k}: {v}" for k, v in meta.items()]
    return "\n".join(lines) + "\n"


async def main_async(args: argparse.Namespace) -> int:
    prom, promtool = shutil.which("prometheus"), shutil.which("promtool")
    if not prom or not promtool:
        print("pull_bench: needs the `prometheus` and `promtool` binaries (Debian package `prometheus`)",
              file=sys.stderr)
        return 2
    counts = [int(x) for x in args.deploys.split(",")]
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="pull-bench-") as tmp:
        work = Path(tmp)
        end = DEPLOY_AT + (args.steps + 2) * INTERVAL_S + SCRAPE_DELAY_S
        deploys = [Deploy(f"svc-{i:03d}", start=T0, deploy_at=DEPLOY_AT, end=end, seed=args.seed)
                   for i in range(max(counts))]
        t0 = time.perf_counter()
        write(str(work / "history.om"), deploys)
        gen_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        out = subprocess.run([promtool, "tsdb", "create-blocks-from", "openmetrics", str(work / "history.om"),
                              str(work / "tsdb")], capture_output=True, text=True, timeout=600)
        if out.returncode != 0:
            print(f"pull_bench: promtool failed: {out.stderr[-2000:]}", file=sys.stderr)
            return 2
        backfill_s = time.perf_counter() - t0
        samples = sum(1 for line in (work / "history.om").open() if not line.startswith("#"))
        port = free_port()
        proc = start_prometheus(prom, work / "tsdb", port)
        try:
            rows = []
            for n in counts:
                rows.append(await run_n(f"http://127.0.0.1:{port}", n, args.steps, work))
                print(json.dumps(rows[-1]), flush=True)
        finally:
            proc.terminate()
            proc.wait(30)
        version = subprocess.run([prom, "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    meta = {
        "command": "python -m bench.pull_bench " + " ".join(sys.argv[1:]),
        "seed": args.seed,
        "steps per deploy count": args.steps,
        "history": f"{len(deploys)} services, {samples:,} samples (15 s resolution, 42 series each), "
                   f"generated in {gen_s:.1f} s, backfilled in {backfill_s:.1f} s",
        "prometheus": version,
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU(s), {platform.platform()}",
        "total wall time": f"{time.perf_counter() - t_all:.0f} s",
    }
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "pull.json").write_text(json.dumps({"meta": meta, "results": rows}, indent=2) + "\n")
    (out_dir / "pull.md").write_text(render(meta, rows))
    print(render(meta, rows))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.pull_bench", description=__doc__.splitlines()[0])
    p.add_argument("--deploys", default="1,10,100", help="comma-separated deploy counts (default 1,10,100)")
    p.add_argument("--steps", type=int, default=10, help="analysis steps measured per count (default 10)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--out", default="bench/results")
    args = p.parse_args(argv)
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
