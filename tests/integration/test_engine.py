"""The rollout engine on a real database (SQLite and PostgreSQL): strategies, overrides, retries,
replay speed and restart. Deploy targets are the recording fake (the real adapters have their own
contract tests)."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import numpy as np
import pytest

from guardrail.config import Settings
from guardrail.domain.errors import ConflictError, ValidationError
from guardrail.domain.model import ChangeType, DeployState, Step, Strategy
from guardrail.domain.records import ActionStatus, AdapterRef, AnalysisSettings, EventKind, Marker
from guardrail.ports import ActionResult
from guardrail.service.engine import Engine
from guardrail.testing import T0, ManualClock, RecordingDeployAdapter, SyntheticTraffic

pytestmark = pytest.mark.integration

STEPS = (Step(weight=10, min_duration_s=120), Step(weight=50, min_duration_s=120), Step(weight=100))


def marker(strategy: Strategy = Strategy.CANARY, steps=STEPS, **kw) -> Marker:
    base = Marker(
        service="checkout",
        environment="production",
        version="1.4.2",
        previous_version="1.4.1",
        commit="abc1234",
        strategy=strategy,
        change_type=ChangeType.FEATURE,
        author="ci",
        adapter=AdapterRef("recording"),
        analysis=AnalysisSettings(max_duration_s=1800),
        steps=steps,
        started_at=T0,
    )
    return replace(base, **kw)


def make_engine(
    store,
    adapter: RecordingDeployAdapter,
    clock: ManualClock | None = None,
    *,
    notifications=None,
    **settings,
) -> Engine:
    s = Settings.model_validate(
        {"allow_marker_adapters": True, "engine": {"rollback_backoff_s": 0.01}, **settings}
    )
    return Engine(
        store=store,
        settings=s,
        adapter_factory=lambda name, cfg: adapter,
        clock=clock or ManualClock(),
        notifications=notifications,
    )


async def drive(
    engine: Engine,
    deploy_id: str,
    traffic: SyntheticTraffic,
    adapter: RecordingDeployAdapter,
    *,
    seed: int = 0,
    windows: int = 180,
    clock: ManualClock | None = None,
    history: bool = True,
    pre_post: bool = False,
):
    """Push 10-s windows at the weight the adapter put in effect, until the deploy finishes."""
    rng = np.random.default_rng(seed)
    if history:
        await engine.ingest(deploy_id, traffic.history(rng))
        await engine.settle(deploy_id)
    d = None
    for k in range(windows):
        w = adapter.weight / 100
        c, b = traffic.window(rng, T0 + 10 * k, weight=w if 0 < w < 1 else None)
        await engine.ingest(deploy_id, [c] if pre_post else [c, b])
        d = await engine.settle(deploy_id)  # the actions the push started, as a client would wait
        if clock is not None:
            clock.advance(10)
            await engine.tick()
        if d.state.terminal:
            break
    return await engine.store.get_deploy(deploy_id)


async def test_healthy_canary_is_promoted_step_by_step(store):
    adapter = RecordingDeployAdapter()
    engine = make_engine(store, adapter)
    d, created = await engine.record_deploy(marker())
    d = await engine.settle(d.id)  # its first step is applied in the background
    assert created and adapter.methods() == ["apply_step"]
    d = await drive(engine, d.id, SyntheticTraffic(rate=400), adapter)
    assert d.state is DeployState.PROMOTED
    assert [(m, s) for m, _, s in adapter.calls] == [
        ("apply_step", 0),
        ("apply_step", 1),
        ("apply_step", 2),
        ("finalize", None),
    ]
    steps = [(s, at) for s, at in d.rollout.history]
    assert (
        steps[1][1] - steps[0][1] >= 120 and steps[2][1] - steps[1][1] >= 120
    )  # minimum durations, data time
    kinds = [e.kind for e in await store.events(d.id)]
    assert (
        kinds[0] is EventKind.CREATED
        and EventKind.VERDICT in kinds
        and kinds.count(EventKind.ACTION_DONE) == 4
    )


async def test_regressed_canary_is_rolled_back_once(store):
    adapter = RecordingDeployAdapter()
    engine = make_engine(store, adapter)
    d, _ = await engine.record_deploy(marker())
    d = await engine.settle(d.id)  # its first step is applied in the background
    d = await drive(engine, d.id, SyntheticTraffic(rate=400, err_ratio=4), adapter)
    assert d.state is DeployState.ROLLED_BACK
    assert adapter.methods() == ["apply_step", "rollback"]
    assert "canary analysis failed" in d.rollout.reason and "error rate" in d.rollout.reason
    assert d.verdict["decision"] == "fail" and d.verdict["decided_at"] is not None
    # more data after the rollback changes nothing
    rng = np.random.default_rng(9)
    c, b = SyntheticTraffic(err_ratio=10).window(rng, T0 + 5000)
    await engine.ingest(d.id, [c, b])
    await engine.settle(d.id)
    assert adapter.methods() == ["apply_step", "rollback"]


async def test_replay_speed_does_not_change_the_outcome(store):
    """The same windows pushed as fast as possible, or with the wall clock moving 10 s per window
    (timers ticking), give the same steps at the same data times and the same verdict."""
    results = []
    for i, real_time in enumerate((False, True)):
        adapter = RecordingDeployAdapter()
        clock = ManualClock()
        engine = make_engine(store, adapter, clock)
        d, _ = await engine.record_deploy(marker(version=f"2.0.{i}"))
        d = await engine.settle(d.id)  # its first step is applied in the background
        d = await drive(
            engine,
            d.id,
            SyntheticTraffic(rate=400, err_ratio=1.8),
            adapter,
            seed=5,
            clock=clock if real_time else None,
        )
        results.append(
            (
                d.state,
                d.rollout.history,
                d.verdict["decision"],
                d.verdict["decided_at"],
                [(m, s) for m, _, s in adapter.calls],
            )
        )
    assert results[0] == results[1]


async def test_duplicate_windows_are_not_counted_twice(store):
    adapter = RecordingDeployAdapter()
    engine = make_engine(store, adapter)
    d, _ = await engine.record_deploy(marker())
    d = await engine.settle(d.id)  # its first step is applied in the background
    rng = np.random.default_rng(1)
    c, b = SyntheticTraffic().window(rng, T0)
    first = await engine.ingest(d.id, [c, b])
    await engine.settle(d.id)
    again = await engine.ingest(d.id, [c, b])
    await engine.settle(d.id)
    assert (first.accepted, first.duplicates) == (2, 0)
    assert (again.accepted, again.duplicates) == (0, 2)
    assert len(await store.samples(d.id)) == 2


async def test_idempotent_marker_starts_one_rollout(store):
    adapter = RecordingDeployAdapter()
    engine = make_engine(store, adapter)
    a, created_a = await engine.record_deploy(marker(), idempotency_key="ci-run-77")
    a = await engine.settle(a.id)  # its first step is applied in the background
    b, created_b = await engine.record_deploy(marker(), idempotency_key="ci-run-77")
    b = await engine.settle(b.id)  # its first step is applied in the background
    assert created_a and not created_b and a.id == b.id
    assert adapter.methods() == ["apply_step"]


async def test_manual_pause_resume_and_rollback_are_audited(store):
    adapter = RecordingDeployAdapter()
    engine = make_engine(store, adapter)
    d, _ = await engine.record_deploy(marker())
    d = await engine.settle(d.id)  # its first step is applied in the background
    d = await engine.override(d.id, "pause", who="alice", why="checking a dashboard")
    d = await engine.settle(d.id)
    assert d.state is DeployState.PAUSED
    d = await drive(engine, d.id, SyntheticTraffic(rate=400), adapter, windows=90)
    assert d.state is DeployState.PAUSED and adapter.methods() == ["apply_step"]  # no promotion while paused
    d = await engine.override(d.id, "resume", who="alice", why="looks fine")
    d = await engine.settle(d.id)
    assert d.state is DeployState.ANALYZING
    d = await engine.override(d.id, "rollback", who="bob", why="customer reports")
    d = await engine.settle(d.id)
    assert d.state is DeployState.ROLLED_BACK
    with pytest.raises(ConflictError):
        await engine.override(d.id, "rollback", who="bob", why="twice")
        await engine.settle(d.id)
    overrides = [e for e in await store.events(d.id) if e.kind is EventKind.OVERRIDE]
    assert [(e.details["who"], e.details["action"]) for e in overrides] == [
        ("alice", "pause"),
        ("alice", "resume"),
        ("bob", "rollback"),
    ]
    with pytest.raises(ValidationError):
        await engine.override(d.id, "pause", who="bob", why="  ")
        await engine.settle(d.id)


async def test_failed_rollback_is_retried_with_backoff(store):
    adapter = RecordingDeployAdapter(fail_rollbacks=2)
    engine = make_engine(store, adapter)
    d, _ = await engine.record_deploy(marker())
    d = await engine.settle(d.id)  # its first step is applied in the background
    d = await engine.override(d.id, "rollback", who="bob", why="drill")
    assert d.state is DeployState.ROLLING_BACK  # answered at once; the attempts run in the background
    d = await engine.wait(d.id, timeout=5)
    assert d.state is DeployState.ROLLED_BACK
    assert adapter.methods().count("rollback") == 3
    failed = [e for e in await store.events(d.id) if e.kind is EventKind.ACTION_FAILED]
    assert len(failed) == 2


async def test_rollback_that_keeps_failing_is_reported(store):
    adapter = RecordingDeployAdapter(fail_rollbacks=100)
    engine = make_engine(store, adapter)
    d, _ = await engine.record_deploy(marker())
    d = await engine.settle(d.id)  # its first step is applied in the background
    await engine.override(d.id, "rollback", who="bob", why="drill")
    await engine.settle(d.id)
    d = await engine.wait(d.id, timeout=10)
    assert d.state is DeployState.ROLLBACK_FAILED
    assert engine.telemetry.rollback_failed.labels(d.id, "checkout")._value.get() == 1


async def test_a_failed_step_rolls_back(store):
    adapter = RecordingDeployAdapter(fail_steps={1})
    engine = make_engine(store, adapter)
    d, _ = await engine.record_deploy(marker())
    d = await engine.settle(d.id)  # its first step is applied in the background
    d = await drive(engine, d.id, SyntheticTraffic(rate=400), adapter)
    assert d.state is DeployState.ROLLED_BACK
    assert adapter.methods() == ["apply_step", "apply_step", "rollback"]
    assert "step 1" in d.rollout.reason


@pytest.mark.parametrize(
    ("strategy", "steps"),
    [
        (Strategy.BLUE_GREEN, (Step(weight=0), Step(weight=100, min_duration_s=300))),
        (
            Strategy.ROLLING,
            (
                Step(servers=1, min_duration_s=120),
                Step(servers=3, min_duration_s=120),
                Step(servers=None, min_duration_s=120),
            ),
        ),
        (Strategy.ALL_AT_ONCE, (Step(weight=100, min_duration_s=300),)),
    ],
)
async def test_pre_post_strategies_promote_healthy_and_roll_back_regressed(store, strategy, steps):
    for version, err_ratio, expected in (
        ("3.0.0", 1.0, DeployState.PROMOTED),
        ("3.0.1", 5.0, DeployState.ROLLED_BACK),
    ):
        adapter = RecordingDeployAdapter()
        engine = make_engine(store, adapter)
        d, _ = await engine.record_deploy(marker(strategy, steps, version=version))
        d = await engine.settle(d.id)  # its first step is applied in the background
        # the new version takes all traffic: pushed as the canary track, the history as baseline
        traffic = SyntheticTraffic(rate=400, weight=0.999, err_ratio=err_ratio)
        d = await drive(engine, d.id, traffic, adapter, pre_post=True)
        assert d.state is expected, (strategy, version, d.rollout.reason)
        assert d.verdict["mode"] == "pre_post"


async def test_restart_resumes_an_action_left_running(store):
    """A process that died during an adapter call: the next one carries it out again, with the
    same action key, and the rollout completes."""
    adapter = RecordingDeployAdapter()
    engine = make_engine(store, adapter)
    d, _ = await engine.record_deploy(marker())
    d = await engine.settle(d.id)  # its first step is applied in the background
    running = [a for a in await store.actions(d.id) if a.status is ActionStatus.DONE]
    # simulate the crash: the step-0 action is put back to running as if its result was never recorded
    await store.update_action(running[0].id, status=ActionStatus.RUNNING, attempts=1, result={})
    adapter2 = RecordingDeployAdapter()
    engine2 = make_engine(store, adapter2)
    assert await engine2.resume() == 1
    await engine2.settle(d.id)
    assert adapter2.calls[0][1] == adapter.calls[0][1]  # same action key both times
    d = await drive(engine2, d.id, SyntheticTraffic(rate=400), adapter2)
    assert d.state is DeployState.PROMOTED


async def test_unknown_adapter_preset_is_rejected_before_anything_is_stored(store):
    engine = Engine(store=store, settings=Settings(), adapter_factory=lambda n, c: RecordingDeployAdapter())
    with pytest.raises(ValidationError) as err:
        await engine.record_deploy(marker(adapter=AdapterRef("command", {"apply_step": "rm -rf /"})))
    assert err.value.field == "adapter.name"
    assert await store.list_deploys() == []


async def test_bad_metric_override_is_rejected_before_anything_is_stored(store):
    engine = make_engine(store, RecordingDeployAdapter())
    with pytest.raises(ValidationError) as err:
        await engine.record_deploy(
            marker(metrics_overrides={"overrides": {"latency_p99": {"critical_change": "x"}}})
        )
    assert "latency_p99" in err.value.field
    assert await store.list_deploys() == []


async def test_step_start_gauge_follows_an_active_deploy(store):
    """guardrail_deploy_step_started_timestamp_seconds feeds the GuardrailDeployStuck alert."""
    adapter = RecordingDeployAdapter()
    clock = ManualClock(T0 + 5)
    engine = make_engine(store, adapter, clock)
    d, _ = await engine.record_deploy(marker())
    d = await engine.settle(d.id)  # its first step is applied in the background
    value = engine.telemetry.registry.get_sample_value(
        "guardrail_deploy_step_started_timestamp_seconds", {"deploy": d.id, "service": "checkout"}
    )
    assert value == T0 + 5
    await engine.override(d.id, "rollback", who="bob", why="drill")
    await engine.settle(d.id)
    assert (
        engine.telemetry.registry.get_sample_value(
            "guardrail_deploy_step_started_timestamp_seconds", {"deploy": d.id, "service": "checkout"}
        )
        is None
    )


async def test_a_step_that_starts_late_gets_its_full_analysis_window(store):
    """max_duration_s is per step (as documented): promoted by hand to 50% at minute 9 of a 10-min
    window, the deploy keeps analysing instead of turning inconclusive a minute later."""
    import numpy as np

    adapter = RecordingDeployAdapter()
    engine = make_engine(store, adapter)
    d, _ = await engine.record_deploy(marker(analysis=AnalysisSettings(max_duration_s=600)))
    d = await engine.settle(d.id)  # its first step is applied in the background
    rng = np.random.default_rng(5)
    traffic = SyntheticTraffic(rate=20)  # far too little to decide within minutes
    for k in range(54):
        c, b = traffic.window(rng, T0 + 10 * k, weight=adapter.weight / 100)
        d = (await engine.ingest(d.id, [c, b])).deploy
        d = await engine.settle(d.id)
    assert d.state is DeployState.ANALYZING and d.rollout.step == 0
    d = await engine.override(d.id, "promote", who="alice", why="payments dashboard looks fine")
    d = await engine.settle(d.id)
    assert d.rollout.step == 1
    for k in range(54, 110):
        c, b = traffic.window(rng, T0 + 10 * k, weight=adapter.weight / 100)
        d = (await engine.ingest(d.id, [c, b])).deploy
        d = await engine.settle(d.id)
        assert d.state is DeployState.ANALYZING, (c.end - T0, d.rollout.reason)
    for k in range(110, 120):
        c, b = traffic.window(rng, T0 + 10 * k, weight=adapter.weight / 100)
        d = (await engine.ingest(d.id, [c, b])).deploy
        d = await engine.settle(d.id)
    assert d.state is DeployState.PAUSED and "inconclusive" in d.rollout.reason  # 10 min after the step


async def test_rolling_back_a_promoted_deploy_with_a_newer_one_live_is_refused_unless_forced(store):
    """Rolling back 1.4.2 after 1.4.3 went out would put 1.4.1 back over 1.4.3: refused (409, naming
    the newer deploy) unless forced."""
    adapter, clock = RecordingDeployAdapter(), ManualClock()
    engine = make_engine(store, adapter, clock)
    old, _ = await engine.record_deploy(marker())
    await engine.settle(old.id)
    await engine.override(old.id, "promote_full", who="alice", why="ship it")
    old = await engine.settle(old.id)
    assert old.state is DeployState.PROMOTED
    clock.advance(3600)
    newer, _ = await engine.record_deploy(marker(version="1.4.3", previous_version="1.4.2"))
    with pytest.raises(ConflictError, match=newer.id) as refused:
        await engine.override(old.id, "rollback", who="bob", why="regret")
    assert "force" in refused.value.detail
    assert (await engine.settle(old.id)).state is DeployState.PROMOTED
    assert "rollback" not in adapter.methods()
    await engine.override(old.id, "rollback", who="bob", why="1.4.2 and 1.4.3 both bad", force=True)
    assert (await engine.settle(old.id)).state is DeployState.ROLLED_BACK
    # with no newer deploy, a promoted deploy rolls back without force, as before
    alone, _ = await engine.record_deploy(marker(service="search"))
    await engine.settle(alone.id)
    await engine.override(alone.id, "promote_full", who="alice", why="ship it")
    assert (await engine.settle(alone.id)).state is DeployState.PROMOTED
    await engine.override(alone.id, "rollback", who="bob", why="regret")
    assert (await engine.settle(alone.id)).state is DeployState.ROLLED_BACK


class HangingStep(RecordingDeployAdapter):
    """Step ``hang_on`` hangs until released (a deploy command or webhook that takes minutes)."""

    def __init__(self, hang_on: int) -> None:
        super().__init__()
        self.hang_on, self.release = hang_on, asyncio.Event()

    async def apply_step(self, target, step, index, total):
        if index != self.hang_on:
            return await super().apply_step(target, step, index, total)
        self.calls.append(("apply_step", target.action_key, index))
        await self.release.wait()
        return ActionResult(True, "applied, late")


async def test_requests_are_answered_while_an_adapter_call_hangs_and_the_rollback_follows_it(store):
    adapter = HangingStep(hang_on=0)
    engine = make_engine(store, adapter)
    try:
        d, _ = await asyncio.wait_for(engine.record_deploy(marker()), 5)  # before: waited for the call
        assert d.state is DeployState.PENDING
        for _ in range(100):
            if adapter.methods():
                break
            await asyncio.sleep(0.01)
        assert adapter.methods() == ["apply_step"]  # the call is under way, hanging
        c, b = SyntheticTraffic(rate=400).window(np.random.default_rng(3), T0)
        assert (await asyncio.wait_for(engine.ingest(d.id, [c, b]), 5)).accepted == 2
        d = await asyncio.wait_for(engine.override(d.id, "rollback", who="bob", why="pages"), 5)
        assert d.state is DeployState.ROLLING_BACK
        adapter.release.set()  # the step's call ends; the rollback is carried out after it, not skipped
        d = await engine.settle(d.id, timeout=10)
        assert d.state is DeployState.ROLLED_BACK
        assert adapter.methods() == ["apply_step", "rollback"]
    finally:
        adapter.release.set()
        await engine.close()
