"""The real OpenTelemetry SDK pushing OTLP/HTTP to a real guardrail server (in-process aiohttp on a
loopback port, SqlStore on SQLite, the noop deploy adapter): a healthy canary is promoted, a regressed
one (more errors, or a much slower tail) rolled back.

(a) the SDK driven from the test (MeterProvider + PeriodicExportingMetricReader(OTLPMetricExporter));
(b) the sample service (``examples/app``, two processes started with ``--otlp-endpoint``) driven by
    its load generator over HTTP.
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import sys
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource

from guardrail.adapters.http.routes import ENGINE
from guardrail.config import Settings
from guardrail.main import build_app

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "otlp-test-token"
READ_TOKEN = "otlp-read-token"
SERVICE, ENV = "checkout", "production"
NEW, OLD = "2.0.0", "1.9.0"
BUCKETS_S = [0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1, 2.5, 5]
DECISION_TIMEOUT_S = 45.0
# a 2x change is "critical": the tests decide in seconds on a few thousand requests per second
MARGINS = {"overrides": {m: {"critical_change": 1.0} for m in ("error_rate", "latency_p99", "latency_p95")}}


@dataclass
class Guardrail:
    url: str
    app: web.Application

    @property
    def otlp_endpoint(self) -> str:
        return f"{self.url}/v1/metrics"

    async def call(self, method: str, path: str, *, token: str = TOKEN, **kw: Any) -> Any:
        async with (
            aiohttp.ClientSession() as s,
            s.request(method, self.url + path, headers={"Authorization": f"Bearer {token}"}, **kw) as r,
        ):
            assert r.status < 300, (r.status, await r.text())
            return await r.json() if r.content_type == "application/json" else await r.text()

    async def mark(self, **analysis: Any) -> dict[str, Any]:
        return await self.call(
            "POST",
            "/api/v1/deploys",
            json={
                "service": SERVICE,
                "environment": ENV,
                "version": NEW,
                "previous_version": OLD,
                "commit": "c0ffee1",
                "change_type": "feature",
                "strategy": "canary",
                "steps": [{"weight": 50, "min_duration_s": 6}, {"weight": 100}],
                "analysis": {"interval_s": 1, "max_duration_s": 120, **analysis},
                "metrics": MARGINS,
            },
        )

    async def wait(self, deploy_id: str, timeout: float = DECISION_TIMEOUT_S) -> dict[str, Any]:
        return await self.call(
            "GET", f"/api/v1/deploys/{deploy_id}/wait", params={"timeout": str(timeout)}, token=READ_TOKEN
        )

    async def samples(self, deploy_id: str) -> list[Any]:
        return await self.app[ENGINE].store.samples(deploy_id)


@pytest.fixture
async def guardrail(tmp_path: Path) -> AsyncIterator[Guardrail]:
    settings = Settings.model_validate(
        {
            "database_url": f"sqlite+aiosqlite:///{tmp_path / 'guardrail.db'}",
            "tokens": [
                {"name": "ci", "token": TOKEN, "scopes": ["ci", "operator", "read"]},
                {"name": "dashboard", "token": READ_TOKEN, "scopes": ["read"]},
            ],
            "engine": {"tick_s": 0.5},
        }
    )
    app = await build_app(settings)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield Guardrail(f"http://127.0.0.1:{port}", app)
    finally:
        await runner.cleanup()


# --- (a) the SDK, driven from the test -------------------------------------------------------------


class SdkService:
    """One process's worth of OpenTelemetry SDK: the duration histogram, a counter, an up-down
    counter and an observable gauge, exported every ``interval_ms`` over OTLP/HTTP (protobuf)."""

    def __init__(self, endpoint: str, version: str, *, interval_ms: int = 250, seed: int = 0) -> None:
        resource = Resource.create(
            {
                "service.name": SERVICE,
                "service.version": version,
                "deployment.environment.name": ENV,
            }
        )
        exporter = OTLPMetricExporter(
            endpoint=endpoint, headers={"authorization": f"Bearer {TOKEN}"}, timeout=5
        )
        self.provider = MeterProvider(
            resource=resource,
            metric_readers=[PeriodicExportingMetricReader(exporter, export_interval_millis=interval_ms)],
        )
        meter = self.provider.get_meter("tests.integration.otlp")
        self.duration = meter.create_histogram(
            "http.server.request.duration", unit="s", explicit_bucket_boundaries_advisory=BUCKETS_S
        )
        self.orders = meter.create_counter("orders.placed")
        self.in_flight = meter.create_up_down_counter("http.server.active_requests")
        self.pool = 3.0
        meter.create_observable_gauge("db.pool.in_use", callbacks=[self._pool])
        self.rng = random.Random(seed)

    def _pool(self, options: CallbackOptions) -> Iterable[Observation]:
        yield Observation(self.pool)

    def serve(self, n: int, *, error_rate: float, median_s: float = 0.05, sigma: float = 0.5) -> None:
        """Record ``n`` synthetic requests."""
        rng = self.rng
        ok = {"http.request.method": "GET", "http.route": "/pay", "http.response.status_code": 200}
        err = {**ok, "http.response.status_code": 500, "error.type": "500"}
        mu = math.log(median_s)
        for _ in range(n):
            self.duration.record(rng.lognormvariate(mu, sigma), err if rng.random() < error_rate else ok)
        self.orders.add(n)
        self.in_flight.add(rng.choice((-1, 1)))

    async def shutdown(self) -> None:
        # blocking (a final export to the server running on this loop): off the loop
        await asyncio.get_running_loop().run_in_executor(None, self.provider.shutdown)


async def drive(
    canary: SdkService,
    baseline: SdkService,
    stop: asyncio.Event,
    *,
    per_second: int = 2000,
    canary_error_rate: float = 0.02,
    canary_sigma: float = 0.5,
) -> None:
    """Equal traffic on both tracks (the step's 50%) until ``stop``."""
    tick = 0.05
    n = int(per_second * tick)
    while not stop.is_set():
        canary.serve(n, error_rate=canary_error_rate, sigma=canary_sigma)
        baseline.serve(n, error_rate=0.02)
        await asyncio.sleep(tick)


CASES = {
    "healthy": ({}, "promoted"),
    "errors_5x": ({"canary_error_rate": 0.10}, "rolled_back"),
    "slow_tail": ({"canary_sigma": 1.1}, "rolled_back"),
}


@pytest.mark.parametrize("case", list(CASES))
async def test_sdk_exporter_pushes_decide_the_deploy(guardrail: Guardrail, case: str) -> None:
    knobs, expected = CASES[case]
    deploy = await guardrail.mark()
    canary = SdkService(guardrail.otlp_endpoint, NEW, seed=1)
    baseline = SdkService(guardrail.otlp_endpoint, OLD, seed=2)
    stop = asyncio.Event()
    traffic = asyncio.create_task(drive(canary, baseline, stop, **knobs))
    try:
        final = await guardrail.wait(deploy["id"])
    finally:
        stop.set()
        await traffic
        await asyncio.gather(canary.shutdown(), baseline.shutdown())
    assert final["state"] == expected, final["verdict"]["summary"] if final["verdict"] else final
    verdict = final["verdict"]
    assert verdict["decision"] == ("pass" if expected == "promoted" else "fail")
    if case == "errors_5x":
        assert "canary error rate" in final["reason"]
    if case == "slow_tail":
        assert "latency_p99" in final["reason"] or "p99" in final["reason"]

    samples = await guardrail.samples(deploy["id"])
    windows = {(s.track.value, s.start) for s in samples}
    paired = {start for track, start in windows if track == "canary"} & {
        start for track, start in windows if track == "baseline"
    }
    assert paired  # the judge got canary and baseline windows of the same data time
    assert all(s.end - s.start == 1.0 and s.start == int(s.start) for s in samples)
    canary_samples = [s for s in samples if s.track.value == "canary"]
    assert all(s.latency is not None and s.latency.total == s.requests for s in canary_samples if s.requests)
    assert any(s.gauges.get("orders.placed", 0) > 0 for s in canary_samples)  # a counter: increases
    assert all(s.gauges.get("db.pool.in_use") == 3.0 for s in canary_samples if "db.pool.in_use" in s.gauges)
    assert any("http.server.active_requests" in s.gauges for s in canary_samples)  # up-down counter: a level

    events = await guardrail.call("GET", f"/api/v1/deploys/{deploy['id']}/events")
    done = [e["details"]["kind"] for e in events["events"] if e["kind"] == "action_done"]
    assert done.count("rollback") == (1 if expected == "rolled_back" else 0)
    assert done.count("finalize") == (1 if expected == "promoted" else 0)
    metrics = await guardrail.call("GET", "/metrics")
    accepted = _metric(metrics, 'guardrail_otlp_points_total{result="accepted"}')
    assert accepted > 0
    rejected = [
        line for line in metrics.splitlines() if line.startswith("guardrail_otlp_points_rejected_total{")
    ]
    # only the exports after the deploy finished (the exporters' last flush) find no active deploy
    assert all('reason="no_deploy"' in line for line in rejected), rejected


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in /metrics")


# --- (b) the sample service, started with --otlp-endpoint ------------------------------------------


class SampleProcess:
    def __init__(self, proc: asyncio.subprocess.Process, url: str) -> None:
        self.proc, self.url = proc, url

    @classmethod
    async def start(cls, endpoint: str, track: str, version: str, *extra: str) -> SampleProcess:
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            # the sample service's exporter takes its auth header from the standard variable
            "OTEL_EXPORTER_OTLP_METRICS_HEADERS": f"authorization=Bearer%20{TOKEN}",
        }
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "examples.app.service",
            "--port",
            "0",
            "--track",
            track,
            "--version",
            version,
            "--service",
            SERVICE,
            "--environment",
            ENV,
            "--otlp-endpoint",
            endpoint,
            "--otlp-interval",
            "0.25",
            *extra,
            cwd=ROOT,
            env=env,
            stdout=asyncio.subprocess.PIPE,
        )
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), timeout=30)).decode()
        assert line.startswith("listening on "), line
        return cls(proc, line.split()[-1])

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.terminate()  # SIGTERM: the service flushes its exporter and exits
            try:
                await asyncio.wait_for(self.proc.wait(), timeout=15)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


@pytest.mark.parametrize(
    ("canary_flags", "expected"),
    [((), "promoted"), (("--error-rate", "0.25"), "rolled_back")],
    ids=["healthy", "errors_5x"],
)
async def test_sample_service_pushing_otlp_decides_the_deploy(
    guardrail: Guardrail, canary_flags: tuple[str, ...], expected: str
) -> None:
    from examples.app.load import LoadGenerator

    deploy = await guardrail.mark()
    common = ("--error-rate", "0.05", "--seed")  # enough errors to bound their ratio in seconds
    canary, baseline = await asyncio.gather(
        SampleProcess.start(guardrail.otlp_endpoint, "canary", NEW, *common, "11", *canary_flags),
        SampleProcess.start(guardrail.otlp_endpoint, "baseline", OLD, *common, "12"),
    )
    load = LoadGenerator(
        [f"{canary.url}/work", f"{baseline.url}/work"], rps=1800, weights=[50, 50], concurrency=32
    )
    traffic = asyncio.create_task(load.run(DECISION_TIMEOUT_S + 10))
    try:
        final = await guardrail.wait(deploy["id"])
    finally:
        load.stop()
        result = await traffic
        await asyncio.gather(canary.stop(), baseline.stop())
    assert final["state"] == expected, final["verdict"]["summary"] if final["verdict"] else final
    assert result.answered(f"{canary.url}/work") > 1000
    samples = await guardrail.samples(deploy["id"])
    assert {s.track.value for s in samples} == {"canary", "baseline"}
    errors = sum(s.errors for s in samples if s.track.value == "canary")
    requests = sum(s.requests for s in samples if s.track.value == "canary")
    assert 0 < errors < requests
    if expected == "rolled_back":
        assert errors / requests > 0.15  # the injected 25% (baseline: 5%)
        assert "canary error rate" in final["reason"]
