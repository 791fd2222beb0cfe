"""Records the three deploys the golden tests draft from, by running the real rollout engine on a
real (temporary, migrated) SQLite store with seeded synthetic traffic:

- ``promoted``: a healthy canary, paused and resumed once by a person, promoted 10% -> 50% -> 100%;
- ``rolled_back``: a canary with 4x the errors, failed by the judge and rolled back (the first
  rollback attempt is refused, the second succeeds);
- ``migration_failed``: a deploy whose first step fails on its database migration.

Each is written to ``tests/drafts/records/<name>.json`` (deploy, events, actions, samples, through
the store codec). Re-record with ``.venv/bin/python -m tests.drafts.record`` and then regenerate
the goldens (``GUARDRAIL_UPDATE_GOLDEN=1``). Deploy ids are random: each is replaced by a fixed one.
Wall seconds of adapter calls (``seconds``) are measured, so they may differ slightly per recording.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from guardrail.adapters.db import codec
from guardrail.adapters.db.migrate import upgrade
from guardrail.adapters.db.store import SqlStore
from guardrail.config import Settings
from guardrail.domain.model import ChangeType, Step, Strategy
from guardrail.domain.records import AdapterRef, AnalysisSettings, Deploy, Marker
from guardrail.ports import ActionResult, DeployTarget
from guardrail.service.engine import Engine
from guardrail.testing import T0, ManualClock, RecordingDeployAdapter, SyntheticTraffic

RECORDS = Path(__file__).parent / "records"
NAMES = ("promoted", "rolled_back", "migration_failed")
# recorded on demand only (the variants test runs them live): no goldens
EXTRA = ("rollback_failed", "manual_rollback", "in_progress")
# a secret in the adapter config: it must never reach the facts or a document
SECRET = "tok-5f1e9c2b7a-never-show"
STEPS = (Step(weight=10, min_duration_s=120), Step(weight=50, min_duration_s=120), Step(weight=100))


class MigratingAdapter(RecordingDeployAdapter):
    """The recording adapter whose first step runs the schema migration, which fails."""

    async def apply_step(self, target: DeployTarget, step: Step, index: int, total: int) -> ActionResult:
        self.calls.append(("apply_step", target.action_key, index))
        if index == 0:
            return ActionResult(
                False,
                'migration 0042_orders_currency failed: ERROR: column "currency" of relation "orders" '
                "contains null values (SQLSTATE 23502)",
                output="alembic upgrade head\nRunning upgrade 0041 -> 0042_orders_currency",
            )
        return await super().apply_step(target, step, index, total)


def _marker(**kw: Any) -> Marker:
    base = Marker(
        service="checkout",
        environment="production",
        version="1.4.2",
        previous_version="1.4.1",
        commit="9f3c2ab",
        commit_time=T0 - 3 * 3600,
        author="dana",
        strategy=Strategy.CANARY,
        change_type=ChangeType.FEATURE,
        description="Saved payment methods at checkout",
        changes=("store tokenised cards per customer", "new /payment-methods endpoint"),
        adapter=AdapterRef("recording", {"url": "https://deploy.internal/hooks/checkout", "token": SECRET}),
        analysis=AnalysisSettings(max_duration_s=1800),
        steps=STEPS,
        started_at=T0,
        checklist={"tests_passed": True, "review_approved": True, "migrations_tested_on_staging": False},
        links={"pr": "https://git.example.com/shop/checkout/pull/812"},
    )
    return replace(base, **kw)


def _settings() -> Settings:
    return Settings.model_validate({"allow_marker_adapters": True, "engine": {"rollback_backoff_s": 0.01}})


async def _drive(
    engine: Engine,
    deploy_id: str,
    traffic: SyntheticTraffic,
    adapter: RecordingDeployAdapter,
    *,
    seed: int,
    clock: ManualClock,
    windows: int = 180,
    pause_at: int | None = None,
    rollback_at: int | None = None,
) -> None:
    """Push 10-s windows at the weight the adapter put in effect until the deploy finishes; the
    wall clock moves 10 s per window."""
    rng = np.random.default_rng(seed)
    await engine.ingest(deploy_id, traffic.history(rng))
    await engine.settle(deploy_id)
    for k in range(windows):
        if pause_at is not None and k == pause_at:
            await engine.override(deploy_id, "pause", who="alice", why="checking the payments dashboard")
            await engine.settle(deploy_id)
        if pause_at is not None and k == pause_at + 6:
            await engine.override(deploy_id, "resume", who="alice", why="payments dashboard looks normal")
            await engine.settle(deploy_id)
        if rollback_at is not None and k == rollback_at:
            await engine.override(deploy_id, "rollback", who="bob", why="customer reports of double charges")
            await engine.settle(deploy_id)
            return
        w = adapter.weight / 100
        c, b = traffic.window(rng, T0 + 10 * k, weight=w if 0 < w < 1 else None)
        await engine.ingest(deploy_id, [c, b])
        d = await engine.settle(deploy_id, through_backoff=False)  # a retry happens after the clock moved
        clock.advance(10)
        if d.state.terminal:
            return
        if d.state.value == "rolling_back":  # a retried rollback: wait for it (wall time)
            await engine.wait(deploy_id, 10)
            return


def _export(deploy: Deploy, events: list, actions: list, samples: list) -> dict[str, Any]:
    return {
        "deploy": {
            "id": deploy.id,
            "marker": codec.marker_to_dict(deploy.marker),
            "rollout": codec.rollout_to_dict(deploy.rollout),
            "created_at": deploy.created_at,
            "updated_at": deploy.updated_at,
            "data_time": deploy.data_time,
            "verdict": deploy.verdict,
        },
        "events": [codec.event_to_dict(e) for e in events],
        "actions": [codec.action_to_dict(a) for a in actions],
        "samples": [codec.sample_to_dict(s) for s in samples],
    }


async def record_one(name: str, store: SqlStore) -> dict[str, Any]:
    clock = ManualClock()
    windows, rollback_at = 180, None
    if name == "promoted":
        adapter = RecordingDeployAdapter()
        marker, traffic, seed, pause_at = _marker(), SyntheticTraffic(rate=400), 11, 3
    elif name == "rolled_back":
        adapter = RecordingDeployAdapter(fail_rollbacks=1)
        marker = _marker(
            version="1.4.3",
            previous_version="1.4.2",
            commit="c41d7e0",
            description="Retry card authorisation on gateway timeouts",
            changes=("retry card authorisation up to 3 times", "shorter gateway timeout"),
        )
        traffic, seed, pause_at = SyntheticTraffic(rate=400, p_err=0.002, err_ratio=4), 12, None
    elif name == "migration_failed":
        adapter = MigratingAdapter()
        marker = _marker(
            version="1.5.0",
            previous_version="1.4.2",
            commit="e07b5d1",
            description="Charge in the customer's currency",
            changes=("orders carry a currency", "prices shown in the customer's currency"),
            db_migrations=True,
            db_migrations_description="add NOT NULL column currency to orders, filled from accounts.currency",
        )
        traffic, seed, pause_at = SyntheticTraffic(rate=400), 13, None
    elif name == "rollback_failed":
        adapter = RecordingDeployAdapter(fail_rollbacks=5)
        marker = _marker(version="1.4.3", previous_version="1.4.2", commit="c41d7e0")
        traffic, seed, pause_at = SyntheticTraffic(rate=400, p_err=0.002, err_ratio=4), 12, None
    elif name == "manual_rollback":
        adapter = RecordingDeployAdapter()
        marker, traffic, seed, pause_at, rollback_at = _marker(), SyntheticTraffic(rate=400), 14, None, 5
    elif name == "in_progress":
        adapter = RecordingDeployAdapter()
        marker, traffic, seed, pause_at, windows = _marker(), SyntheticTraffic(rate=400), 15, None, 8
    else:
        raise ValueError(f"no recording named {name!r}; known: {', '.join(NAMES + EXTRA)}")
    engine = Engine(store=store, settings=_settings(), adapter_factory=lambda _n, _c: adapter, clock=clock)
    try:
        d, _ = await engine.record_deploy(marker)
        d = await engine.settle(d.id)  # its first step is applied in the background
        if not d.state.terminal:
            await _drive(
                engine,
                d.id,
                traffic,
                adapter,
                seed=seed,
                clock=clock,
                windows=windows,
                pause_at=pause_at,
                rollback_at=rollback_at,
            )
        d = await engine.get_deploy(d.id)
        out = _export(d, await store.events(d.id), await store.actions(d.id), await store.samples(d.id))
    finally:
        await engine.close()
    # strict JSON (non-finite floats tagged as the store does), the random id replaced by a fixed one
    return json.loads(codec.dumps(out).replace(d.id, FIXED_IDS.get(name, "0000000000000099")))


FIXED_IDS = {
    "promoted": "0000000000000001",
    "rolled_back": "0000000000000002",
    "migration_failed": "0000000000000003",
}


async def record_all(names: tuple[str, ...] = NAMES) -> dict[str, dict[str, Any]]:
    """Each deploy on its own fresh, migrated SQLite database."""
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            url = f"sqlite+aiosqlite:///{Path(tmp) / (name + '.db')}"
            await upgrade(url)
            store = await SqlStore.open(url, clock=ManualClock())
            try:
                out[name] = await record_one(name, store)
            finally:
                await store.close()
    return out


def main(argv: list[str]) -> int:
    names = tuple(argv) or NAMES
    RECORDS.mkdir(exist_ok=True)
    for name, rec in asyncio.run(record_all(names)).items():
        path = RECORDS / f"{name}.json"
        path.write_text(json.dumps(rec, indent=1, sort_keys=True) + "\n")
        print(f"{path}: {rec['deploy']['rollout']['state']}, {len(rec['events'])} events")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))


def load(name: str) -> tuple[Deploy, list, list, list]:
    """A recorded deploy as the store gives it: (deploy, events, actions, samples)."""
    return from_record(codec.loads((RECORDS / f"{name}.json").read_text()))


def from_record(rec: dict[str, Any]) -> tuple[Deploy, list, list, list]:
    """(deploy, events, actions, samples) of an exported record (tagged non-finite floats decoded)."""
    rec = codec.loads(json.dumps(rec))
    d = rec["deploy"]
    deploy = Deploy(
        id=d["id"],
        marker=codec.marker_from_dict(d["marker"]),
        rollout=codec.rollout_from_dict(d["rollout"]),
        created_at=d["created_at"],
        updated_at=d["updated_at"],
        data_time=d["data_time"],
        verdict=d["verdict"],
    )
    return (
        deploy,
        [codec.event_from_dict(e) for e in rec["events"]],
        [codec.action_from_dict(a) for a in rec["actions"]],
        [codec.sample_from_dict(s) for s in rec["samples"]],
    )
