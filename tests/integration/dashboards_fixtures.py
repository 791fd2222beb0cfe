"""The world the dashboard test queries: a real Prometheus (scrape interval 1 s) scraping two processes
of the sample service (baseline 1.4.1 and canary 1.4.2 of ``checkout``, under steady load, the canary
also exporting OTLP to guardrail) and a real guardrail process (``guardrail serve``, SQLite in a temp
dir) that has judged deploys of every kind, so that every panel of ``dashboards/*.json`` has data:

- two healthy push deploys (promoted) and two regressed ones (rolled back), with a scrape between
  the two of each kind so that ``increase()`` sees the counters move (Prometheus does not count the
  first sample of a new series as an increase);
- a regressed push deploy whose adapter fails every rollback (``rollback_failed``; failed adapter
  actions; a page);
- a pulled deploy of ``checkout`` (``metrics.source: prometheus``) held on its first step, analysed
  from this Prometheus every 2 s: evidence ratios, e-values, the metric source up, fetch latency;
- a pulled deploy of ``broken``, a service whose query template is not valid PromQL: the source
  rejects it every window (source errors) and the analysis stalls;
- notifications routed to a receiver that accepts (sent), one that answers 400 (failed) and a port
  nobody listens on (retried, so the outbox keeps a backlog and an oldest pending age);
- the canary's OTLP points (for an environment without a deploy: received and rejected).

Everything is synchronous from the test's side (subprocesses, blocking HTTP); the webhook receiver
and the load generator run on an event loop in a background thread. Fixture: ``dashboard_stack``.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import numpy as np
import pytest
import yaml
from aiohttp import web

from examples.app.load import LoadGenerator
from guardrail.testing import SyntheticTraffic, sample_json
from tests.integration.conftest import (
    REPO_ROOT,
    PrometheusServer,
    SampleApp,
    _wait_until,
    free_port,
    http_get,
)

SERVICE = "checkout"
BROKEN_SERVICE = "broken"  # its request template is not valid PromQL: every fetch is rejected
ENVIRONMENT = "production"
LOAD_RPS = 100.0
CANARY_WEIGHT = 10  # percent: the pulled deploy's first step, and the share the load generator sends


# --- a background event loop (webhook receiver, load generator) ------------------------------------


class BackgroundLoop:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="dashboards-loop", daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@dataclass
class WebhookReceiver:
    """A webhook endpoint for guardrail's ``webhook`` notifier: ``/ok`` answers 200, ``/reject`` 400.
    Records (path, body) of everything it received."""

    port: int = field(default_factory=free_port)
    received: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    runner: web.AppRunner | None = None

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def _handle(self, request: web.Request) -> web.Response:
        self.received.append((request.path, await request.json()))
        if request.path == "/reject":
            return web.json_response({"error": "rejected by the test receiver"}, status=400)
        return web.json_response({})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/ok", self._handle)
        app.router.add_post("/reject", self._handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


# --- guardrail as a process ------------------------------------------------------------------------


def settings_supported(key: str) -> bool:
    from guardrail.config import Settings

    return key in Settings.model_fields


@dataclass
class GuardrailProcess:
    """``guardrail serve`` with a config file, on a free loopback port (no API tokens: loopback only)."""

    workdir: Path
    config: dict[str, Any]
    port: int
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.workdir / "guardrail.log"

    def launch(self) -> GuardrailProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        path = self.workdir / "guardrail.yaml"
        path.write_text(yaml.safe_dump(self.config))
        env = {k: v for k, v in os.environ.items() if not k.startswith("GUARDRAIL_")}  # the file decides
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "guardrail.cli", "serve", "--config", str(path), "--insecure-no-auth"],
                cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
            )
        return self

    def wait_ready(self) -> None:
        try:
            _wait_until(lambda: http_get(self.url + "/healthz")[0] == 200, 30, "guardrail", self.proc)
        except (RuntimeError, TimeoutError) as e:
            raise RuntimeError(f"{e}; its log:\n{self.log.read_text()[-3000:]}") from None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def call(self, method: str, path: str, body: Any = None, timeout: float = 30.0) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + "/api/v1" + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")


# --- Prometheus with several jobs ------------------------------------------------------------------


@dataclass
class MultiJobPrometheus(PrometheusServer):
    """The conftest's Prometheus, with more scrape jobs (job name -> targets) besides ``job``."""

    extra_jobs: dict[str, list[str]] = field(default_factory=dict)

    def _config(self) -> Path:
        path = super()._config()
        cfg = json.loads(path.read_text())
        cfg["scrape_configs"] += [{"job_name": j, "static_configs": [{"targets": t}]} for j, t in self.extra_jobs.items()]
        path.write_text(json.dumps(cfg))
        return path

    def api(self, path: str, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        status, body = http_get(f"{self.url}{path}?{urlencode(params, doseq=True)}", timeout=10)
        return status, json.loads(body)

    def value(self, promql: str) -> float | None:
        r = self.query(promql)
        return float(r[0]["value"][1]) if r else None

    def wait_value(self, promql: str, ok: Callable[[float], bool], timeout: float, what: str) -> None:
        def check() -> bool:
            v = self.value(promql)
            return v is not None and ok(v)

        _wait_until(check, timeout, f"{what} ({promql})", self.proc)


# --- the stack -------------------------------------------------------------------------------------


@dataclass
class DashboardStack:
    prometheus: MultiJobPrometheus
    guardrail: GuardrailProcess
    baseline: SampleApp
    canary: SampleApp
    receiver: WebhookReceiver
    started_at: float  # wall time before any process started: the start of every range query
    deploys: dict[str, str] = field(default_factory=dict)  # role -> deploy id


def guardrail_config(workdir: Path, port: int, prometheus_url: str, receiver: WebhookReceiver,
                     dead_port: int) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "database_url": f"sqlite+aiosqlite:///{workdir / 'guardrail.db'}",
        "server": {"host": "127.0.0.1", "port": port, "public_url": f"http://127.0.0.1:{port}"},
        "analysis": {"stall_after_s": 4},
        "engine": {"rollback_backoff_s": 0.4, "rollback_backoff_max_s": 2, "tick_s": 0.5},
        "adapters": {
            "steady": {"type": "noop"},
            "failing-rollback": {"type": "noop", "config": {"fail_on": ["rollback"]}},
        },
        "prometheus": {
            "url": prometheus_url, "timeout_s": 5, "retries": 1, "scrape_delay_s": 2, "history_s": 10,
            "poll_s": 0.5,
            "services": {BROKEN_SERVICE: {"requests": "http_requests_total{"}},
        },
        "notifications": {
            "notifiers": {
                "receiver": {"type": "webhook", "config": {"url": receiver.url("/ok"), "timeout_s": 2}},
                "rejecting": {"type": "webhook", "config": {"url": receiver.url("/reject"), "timeout_s": 2}},
                "unreachable": {"type": "webhook",
                                "config": {"url": f"http://127.0.0.1:{dead_port}/hook", "timeout_s": 2}},
            },
            "routes": [
                {"severity": "info", "notifiers": ["receiver", "rejecting"]},
                {"severity": "page", "notifiers": ["receiver", "unreachable"]},
            ],
            "poll_s": 0.5, "backoff_s": 1, "backoff_max_s": 5,
        },
    }
    if settings_supported("dora"):  # the DORA gauges: recomputed every second instead of every 5 min
        cfg["dora"] = {"refresh_s": 1}
    return cfg


def marker(version: str, previous: str, *, service: str = SERVICE, adapter: str = "steady",
           source: str = "push", started_at: float | None = None, interval_s: float = 10,
           first_step_s: float = 60) -> dict[str, Any]:
    m: dict[str, Any] = {
        "service": service, "environment": ENVIRONMENT, "version": version, "previous_version": previous,
        "commit": f"commit-{version}", "commit_time": time.time() - 3600,
        "author": "dashboard-test", "change_type": "feature", "strategy": "canary",
        "description": f"{service} {version}", "metrics": {"source": source},
        "adapter": {"name": adapter},
        "analysis": {"interval_s": interval_s, "max_duration_s": 7200},
        "steps": [{"weight": CANARY_WEIGHT, "min_duration_s": first_step_s}, {"weight": 100}],
    }
    if started_at is not None:
        m["started_at"] = started_at
    return m


def create(g: GuardrailProcess, body: dict[str, Any]) -> dict[str, Any]:
    status, out = g.call("POST", "/deploys", body)
    assert status == 201, (status, out)
    return out


def push_until_decided(g: GuardrailProcess, body: dict[str, Any], traffic: SyntheticTraffic, seed: int) -> str:
    """A push deploy on data time (like ``guardrail demo``): windows at the current step's weight
    until it is promoted, rolled back or rolling back. Returns the deploy id."""
    d = create(g, body)
    rng = np.random.default_rng(seed)
    started = body["started_at"]
    history = [sample_json(s) for s in traffic.history(rng, minutes=10, end=started)]
    status, out = g.call("POST", f"/deploys/{d['id']}/samples", {"samples": history})
    assert status == 202, out
    t, state = started, d["state"]
    while state not in ("promoted", "rolled_back", "rollback_failed", "rolling_back") and t < started + 3600:
        weight = d["steps"][d["step"]["index"]]["weight"] / 100 if d["step"]["index"] >= 0 else None
        if weight is not None and weight >= 1:
            status, d = g.call("GET", f"/deploys/{d['id']}/wait?timeout=20")
            break
        c, b = traffic.window(rng, t, weight=weight)
        status, out = g.call("POST", f"/deploys/{d['id']}/samples", {"samples": [sample_json(c), sample_json(b)]})
        assert status == 202, out
        d, t = out["deploy"], t + traffic.interval
        state = d["state"]
    return d["id"]


def run_scenario(stack: DashboardStack) -> None:
    g, prom = stack.guardrail, stack.prometheus
    # the pulled deploys first: they analyse while the push deploys run
    stack.deploys["pulled"] = create(g, marker("1.4.2", "1.4.1", source="prometheus", interval_s=2,
                                               first_step_s=3600))["id"]
    stack.deploys["stalled"] = create(g, marker("2.0.1", "2.0.0", service=BROKEN_SERVICE, source="prometheus",
                                                interval_s=2, first_step_s=3600))["id"]
    healthy = SyntheticTraffic(rate=400)
    regressed = SyntheticTraffic(rate=400, err_ratio=4.0, canary_sigma=0.62)
    day = time.time() - 86400  # data time of the push deploys: yesterday, an hour apart
    stack.deploys["rollback_failed"] = push_until_decided(
        g, marker("1.3.9", "1.3.8", adapter="failing-rollback", started_at=day), regressed, seed=9)
    finished = 'sum(guardrail_deploys_finished_total{result="%s"})'
    for i, (result, traffic) in enumerate((("promoted", healthy), ("rolled_back", regressed))):
        for k in (1, 2):
            version = f"1.4.{10 * i + k}"
            stack.deploys[f"{result}_{k}"] = push_until_decided(
                g, marker(version, "1.4.0", started_at=day + 3600 * (2 * i + k)), traffic, seed=10 * i + k)
            # let Prometheus scrape each count, so that increase() sees it go 1 -> 2
            prom.wait_value(finished % result, lambda v, k=k: v >= k, 20, f"{result} deploy {k} scraped")
    prom.wait_value(finished % "rollback_failed", lambda v: v >= 1, 30, "the failed rollback scraped")
    # the pulled deploys: evidence from the windows pulled so far, and a stall
    pulled, stalled = stack.deploys["pulled"], stack.deploys["stalled"]
    prom.wait_value(f'count(guardrail_evidence_ratio{{deploy="{pulled}", bound="ci_high"}})', lambda v: v >= 2, 60,
                    "evidence of the pulled deploy")
    prom.wait_value(f'guardrail_analysis_stalled{{deploy="{stalled}"}}', lambda v: v == 1, 30, "the stall")


@pytest.fixture(scope="module")
def dashboard_stack(prometheus_binaries: tuple[str, str], tmp_path_factory: pytest.TempPathFactory,
                    ) -> Iterator[DashboardStack]:
    tmp = tmp_path_factory.mktemp("dashboards")
    started_at = time.time()
    g_port, p_port, dead_port = free_port(), free_port(), free_port()
    bg = BackgroundLoop()
    receiver = WebhookReceiver()
    bg.run(receiver.start())
    otlp = ("--otlp-endpoint", f"http://127.0.0.1:{g_port}/v1/metrics", "--otlp-interval", "1",
            "--environment", "otlp-demo")  # OTLP points for an environment without a deploy
    baseline = SampleApp("baseline", "1.4.1", args=("--seed", "1", "--error-rate", "0.02"))
    canary = SampleApp("canary", "1.4.2", args=("--seed", "2", "--error-rate", "0.02", *otlp))
    g = GuardrailProcess(tmp / "guardrail", {}, g_port)
    g.config = guardrail_config(g.workdir, g_port, f"http://127.0.0.1:{p_port}", receiver, dead_port)
    prom = MultiJobPrometheus(prometheus_binaries[0], tmp / "tsdb", [baseline.target, canary.target], port=p_port,
                              job=SERVICE, extra_jobs={"guardrail": [f"127.0.0.1:{g_port}"]})
    load = LoadGenerator([baseline.work_url, canary.work_url], rps=LOAD_RPS,
                         weights=[100 - CANARY_WEIGHT, CANARY_WEIGHT])
    load_done = None
    try:
        g.launch()  # starts while the sample apps start
        for app in (baseline, canary):
            app.start()
        g.wait_ready()
        prom.start()
        load_done = bg.spawn(load.run(duration_s=3600))
        prom.wait_scraped(2)
        prom.wait_value('count(up{job="guardrail"} == 1)', lambda v: v == 1, 20, "guardrail scraped")
        stack = DashboardStack(prom, g, baseline, canary, receiver, started_at)
        run_scenario(stack)
        yield stack
    finally:
        load.stop()
        if load_done is not None:
            try:
                load_done.result(15)
            except Exception as e:  # the load's outcome does not matter once the test ran
                print(f"load generator: {e!r}")
        for app in (baseline, canary):  # first: the canary flushes its last OTLP points to guardrail
            app.stop()
        g.stop()
        prom.stop()
        bg.run(receiver.stop())
        bg.close()
