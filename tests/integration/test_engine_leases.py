"""The engine's timers with and without deploy leases: a deploy that gets no data is noted as stalled
and then judged inconclusive; with leases, an action left running by a replica that stopped is carried
out by another replica's sweep, with the same action key, and a live replica's work is left alone."""

from __future__ import annotations

import asyncio

import pytest

from guardrail.domain.model import DeployState
from guardrail.domain.records import ActionStatus, EventKind
from guardrail.ports import ActionResult, DeployTarget
from guardrail.testing import T0, ManualClock, RecordingDeployAdapter
from tests.integration.test_engine import make_engine, marker

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("leases", ["on", "off"])
async def test_a_deploy_without_data_is_noted_stalled_then_judged_inconclusive(store, leases: str) -> None:
    clock, adapter = ManualClock(), RecordingDeployAdapter()
    engine = make_engine(
        store,
        adapter,
        clock,
        engine={"leases": leases, "rollback_backoff_s": 0.01},
        analysis={"stall_after_s": 60, "max_duration_s": 1800},
    )
    try:
        d, _ = await engine.record_deploy(marker())
        d = await engine.settle(d.id)  # the first step is applied in the background
        assert d.state is DeployState.ANALYZING
        clock.advance(30)
        await engine.tick()
        assert not [e for e in await store.events(d.id) if "stalled" in e.message]
        clock.advance(31)
        await engine.tick()
        await engine.tick()  # noted once
        assert len([e for e in await store.events(d.id) if "analysis stalled" in e.message]) == 1
        clock.advance(1800)
        await engine.tick()
        after = await store.get_deploy(d.id)
        assert after is not None and after.state is not DeployState.ANALYZING
        assert any("nothing to judge" in e.message for e in await store.events(d.id))
        if leases == "on":  # nothing stays leased once the sweep is done
            assert await store.acquire_lease(d.id, "other", ttl_s=5) is not None
    finally:
        await engine.close()


class HangingRollback(RecordingDeployAdapter):
    """Steps work; a rollback hangs until released (a replica stopped in the middle of it)."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()

    async def rollback(self, target: DeployTarget, reason: str) -> ActionResult:
        self.calls.append(("rollback", target.action_key, None))
        await self.release.wait()
        return ActionResult(True, "back")


async def test_another_replica_carries_out_an_action_a_stopped_replica_left_running(store) -> None:
    clock = ManualClock()
    hanging, survivor = HangingRollback(), RecordingDeployAdapter()
    a = make_engine(store, hanging, clock, engine={"leases": "on", "replica_id": "a", "lease_s": 30})
    b = make_engine(store, survivor, clock, engine={"leases": "on", "replica_id": "b", "lease_s": 30})
    try:
        d, _ = await a.record_deploy(marker())
        await a.override(d.id, "rollback", who="oncall", why="bad")  # answered at once; the call hangs
        for _ in range(200):
            if hanging.methods()[-1:] == ["rollback"]:
                break
            await asyncio.sleep(0.01)
        running = await store.actions(d.id, statuses=(ActionStatus.RUNNING,))
        assert len(running) == 1
        await b.tick()  # a is alive and holds the lease: b leaves the action alone
        assert survivor.methods() == [] and await store.actions(d.id, statuses=(ActionStatus.RUNNING,))
        await a.close()  # a stops mid-call (its lease goes with it)
        await b.tick()
        await b.settle(d.id, timeout=10)
        assert survivor.methods() == ["rollback"]
        assert survivor.calls[0][1] == hanging.calls[-1][1]  # the same action key
        final = await store.get_deploy(d.id)
        assert final is not None and final.state is DeployState.ROLLED_BACK
        notes = [
            e for e in await store.events(d.id) if e.kind is EventKind.NOTE and "same action key" in e.message
        ]
        assert len(notes) == 1 and notes[0].details["replica"] == "b"
    finally:
        hanging.release.set()
        await a.close()
        await b.close()


async def test_a_replica_whose_clock_runs_an_hour_ahead_leaves_a_live_replicas_deploy_alone(store) -> None:
    """Lease expiry is reckoned on the database's clock, not on each replica's."""
    hanging, survivor = HangingRollback(), RecordingDeployAdapter()
    a = make_engine(store, hanging, ManualClock(), engine={"leases": "on", "replica_id": "a", "lease_s": 30})
    b = make_engine(
        store, survivor, ManualClock(T0 + 3600), engine={"leases": "on", "replica_id": "b", "lease_s": 30}
    )
    try:
        d, _ = await a.record_deploy(marker())
        busy = asyncio.ensure_future(a.override(d.id, "rollback", who="oncall", why="bad"))
        for _ in range(300):
            if hanging.methods()[-1:] == ["rollback"]:
                break
            await asyncio.sleep(0.01)
        assert hanging.methods()[-1:] == ["rollback"]
        await b.tick()
        await asyncio.sleep(0.1)  # b's runner, had it taken the deploy, would have called by now
        assert survivor.methods() == []  # a is alive, its lease renewed: b's fast clock changes nothing
    finally:
        hanging.release.set()
        await asyncio.gather(busy, return_exceptions=True)
        await a.close()
        await b.close()


class CancellableRollback(HangingRollback):
    """A rollback that hangs, and notes whether it was cancelled."""

    def __init__(self) -> None:
        super().__init__()
        self.cancelled = False

    async def rollback(self, target: DeployTarget, reason: str) -> ActionResult:
        try:
            return await super().rollback(target, reason)
        except asyncio.CancelledError:
            self.cancelled = True
            raise


async def test_a_replica_that_loses_its_lease_stops_and_writes_nothing_more(store) -> None:
    from sqlalchemy import text

    hanging = CancellableRollback()
    a = make_engine(store, hanging, ManualClock(), engine={"leases": "on", "replica_id": "a", "lease_s": 0.6})
    try:
        d, _ = await a.record_deploy(marker())
        busy = asyncio.ensure_future(a.override(d.id, "rollback", who="oncall", why="bad"))
        for _ in range(300):
            if hanging.methods()[-1:] == ["rollback"]:
                break
            await asyncio.sleep(0.01)
        before = len(await store.events(d.id))
        # another replica takes the deploy over (a's database link was cut long enough, say)
        async with store._write("a takeover") as conn:  # as a replica b whose acquire found a's lease expired
            await conn.execute(text("UPDATE deploys SET lease_owner = 'b' WHERE id = :id"), {"id": d.id})
        for _ in range(200):  # a notices at its next renewal (every lease_s / 3) and stops the call
            if hanging.cancelled:
                break
            await asyncio.sleep(0.01)
        assert hanging.cancelled
        hanging.release.set()
        await asyncio.gather(busy, return_exceptions=True)
        await asyncio.sleep(0.3)
        assert [a.status for a in await store.actions(d.id)][-1] is ActionStatus.RUNNING  # left for b
        assert not [e for e in (await store.events(d.id))[before:] if e.kind is EventKind.ACTION_DONE]
    finally:
        hanging.release.set()
        await a.close()
