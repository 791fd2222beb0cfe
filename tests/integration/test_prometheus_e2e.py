"""End to end on real servers: the sample service (a baseline and a canary process) under load,
a real Prometheus scraping them every second, and guardrail's engine (SqlStore on SQLite) with the
Poller pulling from that Prometheus. The deploy adapter moves the load generator's split (10% then
50% of the requests to the canary process): that is the traffic shift of this simulation.

The canary steps are short (10 s) and the windows 2 s. Both processes fail 5% of requests, and the
marker widens the PASS margins (``critical_change``: error rate 3, p99 5, p95 3), so a healthy canary
can be promoted after ~20 s of traffic at 600 requests/s; the judge's defaults need minutes of real
traffic. The FAIL side is untouched (any harmful change counts). One Prometheus and one pair of
processes serve the session's tests (each has its own engine, database and load)."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from examples.app.load import LoadGenerator
from guardrail.adapters.db.store import SqlStore
from guardrail.adapters.sources.prometheus import PrometheusMetricSource
from guardrail.config import Settings
from guardrail.domain.model import ChangeType, DeployState, Step, Strategy
from guardrail.domain.records import AdapterRef, AnalysisSettings, EventKind, Marker
from guardrail.ports import ActionResult, DeployTarget
from guardrail.service.engine import Engine
from guardrail.service.poller import Poller, PollSettings
from guardrail.testing import RecordingDeployAdapter
from tests.integration.conftest import SAMPLE_ERROR_RATE, ScrapedPair

pytestmark = pytest.mark.integration

RPS = 600
HISTORY_S = 4.0
ERROR_RATE = SAMPLE_ERROR_RATE
STEPS = (Step(weight=10, min_duration_s=10), Step(weight=50, min_duration_s=10), Step(weight=100))
WIDE_MARGINS = {"overrides": {"error_rate": {"critical_change": 3.0}, "latency_p99": {"critical_change": 5.0},
                              "latency_p95": {"critical_change": 3.0}}}


@dataclass
class TrafficSplitAdapter(RecordingDeployAdapter):
    """Records the calls, and moves the load generator's split as a load balancer would."""

    name: str = "traffic-split"
    load: LoadGenerator | None = None
    log: list[tuple[float, float]] = field(default_factory=list)  # (wall time, canary weight)

    def _split(self) -> None:
        assert self.load is not None
        self.load.set_weights([100 - self.weight, self.weight])
        self.log.append((time.time(), self.weight))

    async def apply_step(self, target: DeployTarget, step: Step, index: int, total: int) -> ActionResult:
        r = await super().apply_step(target, step, index, total)
        self._split()
        return r

    async def finalize(self, target: DeployTarget) -> ActionResult:
        r = await super().finalize(target)
        self._split()
        return r

    async def rollback(self, target: DeployTarget, reason: str) -> ActionResult:
        r = await super().rollback(target, reason)
        self._split()
        return r


@pytest.fixture
def pair(scraped_pair: ScrapedPair) -> Iterator[ScrapedPair]:
    """The session's processes, healthy again after each test (and Prometheus up)."""
    yield scraped_pair
    scraped_pair.canary.regress(error_rate=ERROR_RATE)
    if scraped_pair.prometheus.proc is None:
        scraped_pair.prometheus.start()
    scraped_pair.prometheus.wait_scraped(2)  # after a restart, until it scrapes again


@pytest.fixture
async def store(sqlite_template: Path, tmp_path: Path) -> AsyncIterator[SqlStore]:
    path = tmp_path / "guardrail.db"
    shutil.copyfile(sqlite_template, path)
    s = await SqlStore.open(f"sqlite+aiosqlite:///{path}")
    yield s
    await s.close()


@dataclass
class Rig:
    engine: Engine
    poller: Poller
    source: PrometheusMetricSource
    adapter: TrafficSplitAdapter
    load: LoadGenerator
    tasks: list[asyncio.Task] = field(default_factory=list)


@contextlib.asynccontextmanager
async def rig(pair: ScrapedPair, store: SqlStore) -> AsyncIterator[Rig]:
    """Load on the baseline only, then the engine and the poller running; all stopped on exit."""
    load = LoadGenerator([pair.baseline.work_url, pair.canary.work_url], rps=RPS, weights=[100, 0], concurrency=32)
    adapter = TrafficSplitAdapter(load=load)
    settings = Settings.model_validate({"allow_marker_adapters": True})
    engine = Engine(store=store, settings=settings, adapter_factory=lambda name, cfg: adapter)
    source = PrometheusMetricSource(pair.prometheus.url, timeout_s=2, retries=1, backoff_s=0.1)
    poller = Poller(engine, source, settings=PollSettings(scrape_delay_s=1.5, history_s=HISTORY_S, poll_s=0.2))
    r = Rig(engine, poller, source, adapter, load)
    r.tasks.append(asyncio.create_task(load.run(300)))
    r.tasks.append(asyncio.create_task(poller.run()))
    try:
        yield r
    finally:
        load.stop()
        for t in r.tasks[1:]:
            t.cancel()
        for t in r.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        await source.close()
        await engine.close()


def marker(**kw) -> Marker:
    return Marker(
        service="checkout", environment="production", version="1.4.2", previous_version="1.4.1", commit="abc1234",
        strategy=Strategy.CANARY, change_type=ChangeType.FEATURE, author="ci", metrics_source="prometheus",
        metrics_overrides=WIDE_MARGINS, adapter=AdapterRef("traffic-split"),
        analysis=AnalysisSettings(interval_s=2.0, max_duration_s=120), steps=STEPS, **kw,
    )


async def test_a_healthy_canary_is_promoted_from_prometheus_data(pair: ScrapedPair, store: SqlStore) -> None:
    async with rig(pair, store) as r:
        await asyncio.sleep(HISTORY_S)  # baseline history before the deploy
        d, _ = await r.engine.record_deploy(marker())
        d = await r.engine.settle(d.id)  # its first step is applied in the background
        t0 = time.monotonic()
        final = await r.engine.wait(d.id, timeout=75)
        took = time.monotonic() - t0
    assert final.state is DeployState.PROMOTED, (final.rollout.reason, final.verdict and final.verdict["summary"])
    assert r.adapter.methods() == ["apply_step", "apply_step", "apply_step", "finalize"]
    assert final.verdict is not None and final.verdict["decision"] == "pass"
    samples = await store.samples(d.id)
    started = final.marker.started_at
    assert any(s.end <= started and s.track.value == "baseline" for s in samples)  # the pre-deploy history
    assert {s.track.value for s in samples if s.start >= started} == {"canary", "baseline"}
    assert took < 75


async def test_a_regressed_canary_is_rolled_back(pair: ScrapedPair, store: SqlStore) -> None:
    async with rig(pair, store) as r:
        await asyncio.sleep(HISTORY_S)
        d, _ = await r.engine.record_deploy(marker())
        d = await r.engine.settle(d.id)  # its first step is applied in the background
        await asyncio.sleep(2)
        await asyncio.to_thread(pair.canary.regress, error_rate=5 * ERROR_RATE)
        final = await r.engine.wait(d.id, timeout=45)
    assert final.state is DeployState.ROLLED_BACK, final.verdict and final.verdict["summary"]
    assert "finalize" not in r.adapter.methods() and r.adapter.methods().count("rollback") == 1
    assert r.adapter.weight == 0.0
    failing = [e for e in final.verdict["evidence"] if e["status"] == "fail"]
    assert [e["metric"] for e in failing] == ["error_rate"]
    assert "canary analysis failed" in final.rollout.reason


async def test_prometheus_down_mid_analysis_holds_then_the_deploy_finishes(pair: ScrapedPair, store: SqlStore) -> None:
    async with rig(pair, store) as r:
        await asyncio.sleep(HISTORY_S)
        d, _ = await r.engine.record_deploy(marker())
        d = await r.engine.settle(d.id)  # its first step is applied in the background
        await asyncio.sleep(5)
        await asyncio.to_thread(pair.prometheus.stop)
        stop_wall = time.time()
        stopped_at = await r.engine.get_deploy(d.id)
        await asyncio.sleep(9)  # past step 1's 10 s minimum: without data it must not move on
        during = await r.engine.get_deploy(d.id)
        up = r.engine.telemetry.registry.get_sample_value("guardrail_source_up", {"source": "prometheus"})
        errors = r.engine.telemetry.registry.get_sample_value(
            "guardrail_source_errors_total", {"source": "prometheus", "kind": "unavailable"})
        restart_wall = time.time()
        await asyncio.to_thread(pair.prometheus.start)  # same data dir, same port
        final = await r.engine.wait(d.id, timeout=75)
    assert during.state is DeployState.ANALYZING and during.rollout.step == stopped_at.rollout.step
    assert during.data_time - stopped_at.data_time <= 2 * 2.0  # at most what was already scraped
    assert up == 0 and errors and errors >= 2
    assert final.state is DeployState.PROMOTED, final.verdict and final.verdict["summary"]
    notes = [e.message for e in await store.events(d.id) if e.kind is EventKind.NOTE]
    down = [n for n in notes if n.startswith("metric source unavailable")]
    back = [n for n in notes if n.startswith("metric source back")]
    assert len(down) == 1 and "cannot reach Prometheus" in down[0] and "no promotion" in down[0]
    assert len(back) == 1
    samples = await store.samples(d.id)
    assert not any(stop_wall + 2 <= s.start and s.end <= restart_wall for s in samples)  # holes, not zeros
    assert all(s.requests > 0 for s in samples if s.start >= final.marker.started_at)
