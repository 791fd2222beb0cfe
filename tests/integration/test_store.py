"""SqlStore against real SQLite (a temp file) and real PostgreSQL (GUARDRAIL_TEST_DATABASE_URL)."""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import math
import random

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from guardrail.adapters.db import codec
from guardrail.adapters.db.engine import StoreError, create_engine
from guardrail.adapters.db.migrate import current_revision, head_revision, upgrade
from guardrail.adapters.db.store import SqlStore
from guardrail.adapters.db.tables import metadata
from guardrail.domain.errors import ConfigError, ConflictError, NotFoundError, ValidationError
from guardrail.domain.model import ChangeType, DeployState, Histogram, Sample, Step, Strategy, Track
from guardrail.domain.records import (
    Action,
    ActionStatus,
    AdapterRef,
    AnalysisSettings,
    Deploy,
    EventKind,
    Marker,
    TimelineEvent,
)
from guardrail.domain.rollout import Command, CommandKind, Rollout
from guardrail.ports import Store

pytestmark = pytest.mark.integration

T0 = 1_714_557_600.123456  # unix seconds with microseconds: needs double precision


def marker(service: str = "checkout", environment: str = "production", **kw: object) -> Marker:
    """A marker with every field set away from its default."""
    fields: dict[str, object] = {
        "service": service,
        "environment": environment,
        "version": "1.4.2",
        "previous_version": "1.4.1",
        "commit": "0f3c9a1",
        "strategy": Strategy.CANARY,
        "change_type": ChangeType.BUGFIX,
        "author": "ana@example.com",
        "commit_time": T0 - 3600.25,
        "description": "fix rounding in totals — ünïcödé",
        "changes": ("fix rounding", "bump client"),
        "db_migrations": True,
        "db_migrations_description": "add column totals.rounding",
        "metrics_source": "prometheus",
        "metrics_overrides": {"errors": {"allowed": 1.2}, "gauges": ["queue_depth"]},
        "adapter": AdapterRef(
            name="webhook",
            config={"url": "https://deploy.example/hook", "token": "s3cret-token", "retries": 3},
        ),
        "analysis": AnalysisSettings(
            alpha=0.05, interval_s=30.5, max_duration_s=900.0, warmup_s=60.0, on_inconclusive="rollback"
        ),
        "steps": (
            Step(weight=5.5, min_duration_s=120.0),
            Step(servers=3, min_duration_s=60),
            Step(weight=100),
        ),
        "started_at": T0 + 0.5,
    }
    fields.update(kw)
    return Marker(**fields)  # type: ignore[arg-type]


def deploy(
    id: str = "d-1",
    *,
    created_at: float = T0,
    state: DeployState = DeployState.PENDING,
    **marker_kw: object,
) -> Deploy:
    m = marker(**marker_kw)
    rollout = Rollout(steps=m.steps, concurrent=True, on_inconclusive="rollback", state=state)
    return Deploy(
        id=id, marker=m, rollout=rollout, created_at=created_at, updated_at=created_at, data_time=T0
    )


def event(message: str = "recorded", kind: EventKind = EventKind.CREATED, **details: object) -> TimelineEvent:
    return TimelineEvent(kind=kind, message=message, data_time=T0 + 1.25, wall_time=T0 + 2.5, details=details)


def window(track: Track, start: float, length: float = 60.0, requests: int = 100) -> Sample:
    return Sample(
        track=track,
        start=start,
        end=start + length,
        requests=requests,
        errors=requests // 50,
        latency=Histogram(bounds=(0.05, 0.25, 1.0), counts=(60, 30, 8, 2)),
        latencies=(0.012, 0.2, 1.7),
        gauges={"cpu": 0.61, "queue_depth": 3.0},
    )


# --- deploys ---------------------------------------------------------------------------------------


async def test_deploy_round_trips_every_field(store: SqlStore) -> None:
    """Marker (adapter config included), steps, rollout and times come back equal."""
    d = deploy()
    d = dataclasses.replace(
        d,
        rollout=dataclasses.replace(
            d.rollout,
            state=DeployState.ANALYZING,
            step=1,
            step_started_at=T0 + 10.75,
            traffic_started_at=T0 + 5.5,
            pending_step=2,
            rollback_attempts=1,
            reason="why not",
            history=((0, T0 + 5.5), (1, T0 + 10.75)),
        ),
        verdict={"decision": "continue", "evidence": [{"ci_high": math.inf, "ci_low": 0.5}]},
    )
    stored, created = await store.create_deploy(d, event(), None)
    assert created and stored == d
    assert await store.get_deploy("d-1") == d
    assert await store.list_deploys() == [d]
    assert await store.active_deploys() == [d]
    assert (await store.get_deploy("d-1")).marker.adapter.config["token"] == "s3cret-token"


async def test_unknown_deploy_is_none(store: SqlStore) -> None:
    assert await store.get_deploy("nope") is None


async def test_timestamps_keep_sub_second_precision(store: SqlStore) -> None:
    """Unix times with microseconds survive exactly (double precision on PostgreSQL)."""
    t = 1_714_557_600.000001
    d = dataclasses.replace(deploy(), created_at=t, updated_at=t + 0.000001, data_time=t + 0.5)
    await store.create_deploy(d, dataclasses.replace(event(), wall_time=t, data_time=t + 0.25), None)
    got = await store.get_deploy(d.id)
    assert (got.created_at, got.updated_at, got.data_time) == (t, t + 0.000001, t + 0.5)
    (ev,) = await store.events(d.id)
    assert (ev.wall_time, ev.data_time) == (t, t + 0.25)
    assert await store.list_deploys(since=t, until=t) == [got]
    assert await store.list_deploys(since=t + 0.000001) == []


async def test_same_idempotency_key_returns_the_first_deploy(store: SqlStore) -> None:
    first, created = await store.create_deploy(deploy("d-1"), event(), "ci-run-42")
    again, created_again = await store.create_deploy(deploy("d-2", version="9.9.9"), event(), "ci-run-42")
    assert created and not created_again
    assert again == first
    assert await store.get_deploy("d-2") is None
    assert [d.id for d in await store.list_deploys()] == ["d-1"]
    assert len(await store.events("d-1")) == 1


async def test_concurrent_creates_with_one_idempotency_key_record_one_deploy(store: SqlStore) -> None:
    results = await asyncio.gather(
        *(store.create_deploy(deploy(f"d-{i}"), event(f"created {i}"), "ci-run-7") for i in range(10))
    )
    assert sum(created for _, created in results) == 1
    winner = next(d for d, created in results if created)
    assert all(d == winner for d, _ in results)
    assert [d.id for d in await store.list_deploys()] == [winner.id]
    assert len(await store.events(winner.id)) == 1


async def test_reused_deploy_id_without_key_conflicts(store: SqlStore) -> None:
    await store.create_deploy(deploy("d-1"), event(), None)
    with pytest.raises(ConflictError) as err:
        await store.create_deploy(deploy("d-1"), event(), None)
    assert "s3cret" not in str(err.value)  # driver messages never carry the statement's parameters


async def test_list_deploys_filters_and_orders_newest_first(store: SqlStore) -> None:
    rows = [
        deploy("a", created_at=T0 + 1, service="checkout", environment="production"),
        deploy("b", created_at=T0 + 2, service="checkout", environment="staging"),
        deploy(
            "c", created_at=T0 + 3, service="search", environment="production", state=DeployState.PROMOTED
        ),
        deploy(
            "d", created_at=T0 + 4, service="checkout", environment="production", state=DeployState.PAUSED
        ),
    ]
    for d in random.Random(3).sample(rows, len(rows)):
        await store.create_deploy(d, event(), None)

    async def ids(**kw: object) -> list[str]:
        return [d.id for d in await store.list_deploys(**kw)]  # type: ignore[arg-type]

    assert await ids() == ["d", "c", "b", "a"]
    assert await ids(service="checkout") == ["d", "b", "a"]
    assert await ids(service="checkout", environment="production") == ["d", "a"]
    assert await ids(environment="production") == ["d", "c", "a"]
    assert await ids(state=DeployState.PROMOTED) == ["c"]
    assert await ids(since=T0 + 2) == ["d", "c", "b"]
    assert await ids(until=T0 + 2) == ["b", "a"]
    assert await ids(since=T0 + 2, until=T0 + 3) == ["c", "b"]
    assert await ids(limit=2) == ["d", "c"]
    assert await ids(service="nobody") == []
    with pytest.raises(ValidationError):
        await store.list_deploys(limit=0)


async def test_active_deploys_exclude_terminal_states(store: SqlStore) -> None:
    for i, state in enumerate(DeployState):
        await store.create_deploy(deploy(state.value, created_at=T0 + i, state=state), event(), None)
    active = {d.id for d in await store.active_deploys()}
    assert active == {"pending", "analyzing", "paused", "rolling_back"}
    # a save that moves a deploy to a terminal state takes it out
    d = await store.get_deploy("paused")
    await store.save("paused", rollout=dataclasses.replace(d.rollout, state=DeployState.ROLLED_BACK))
    assert {d.id for d in await store.active_deploys()} == {"pending", "analyzing", "rolling_back"}
    assert [d.id for d in await store.list_deploys(state=DeployState.ROLLED_BACK)] == [
        "rolled_back",
        "paused",
    ]


# --- save ------------------------------------------------------------------------------------------


async def test_save_updates_appends_and_returns_actions_with_ids(store_url: str) -> None:
    now = [T0 + 100.5]
    async with SqlStore(store_url, clock=lambda: now[0]) as store:
        d = deploy()
        await store.create_deploy(d, event(), None)
        rollout = dataclasses.replace(d.rollout, state=DeployState.ANALYZING, step=0, step_started_at=T0 + 61)
        verdict = {"decision": "continue", "evaluated_at": T0 + 90, "ci": [0.5, math.inf], "nan": math.nan}
        new = [
            Action("d-1", Command(CommandKind.APPLY_STEP, 1)),
            Action("d-1", Command(CommandKind.ROLLBACK, reason="error rate up"), attempts=2, result={"n": 1}),
        ]
        saved = await store.save(
            "d-1",
            rollout=rollout,
            data_time=T0 + 90.5,
            verdict=verdict,
            events=[event("step 0 applied", EventKind.TRANSITION, before="pending", after="analyzing")],
            new_actions=new,
        )
        assert [a.id for a in saved] == sorted({a.id for a in saved}) and all(a.id > 0 for a in saved)
        assert [dataclasses.replace(a, id=0) for a in saved] == new
        assert await store.actions("d-1") == saved
        got = await store.get_deploy("d-1")
        assert (got.rollout, got.data_time, got.updated_at) == (rollout, T0 + 90.5, T0 + 100.5)
        assert got.verdict["ci"] == [0.5, math.inf] and math.isnan(got.verdict["nan"])

        # what is not given is left alone
        now[0] += 1
        await store.save("d-1", events=[event("note", EventKind.NOTE)])
        again = await store.get_deploy("d-1")
        assert (again.rollout, again.data_time, again.verdict["ci"]) == (rollout, T0 + 90.5, [0.5, math.inf])
        assert again.updated_at == T0 + 101.5


async def test_save_unknown_deploy_raises_not_found(store: SqlStore) -> None:
    with pytest.raises(NotFoundError):
        await store.save(
            "ghost", events=[event()], new_actions=[Action("ghost", Command(CommandKind.FINALIZE))]
        )
    assert await store.actions() == []


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(Action("d-1", Command(CommandKind.ROLLBACK), attempts=-1), id="db-refuses-row"),
        pytest.param(Action("d-1", Command(CommandKind.ROLLBACK), result={"x": object()}), id="unencodable"),
    ],
)
async def test_save_is_atomic(store: SqlStore, bad: Action) -> None:
    """A bad last action (refused by the database's CHECK, or not JSON) fails the whole save after
    the update and the events were already sent: nothing of it is stored."""
    before, _ = await store.create_deploy(deploy(), event(), None)
    with pytest.raises(ValidationError):
        await store.save(
            "d-1",
            rollout=dataclasses.replace(before.rollout, state=DeployState.ROLLING_BACK),
            data_time=T0 + 500,
            verdict={"decision": "fail"},
            events=[event("a"), event("b")],
            new_actions=[Action("d-1", Command(CommandKind.APPLY_STEP, 0)), bad],
        )
    assert await store.get_deploy("d-1") == before
    assert [e.message for e in await store.events("d-1")] == ["recorded"]
    assert await store.actions() == []
    assert [d.id for d in await store.active_deploys()] == ["d-1"]


async def test_save_rejects_an_action_of_another_deploy(store: SqlStore) -> None:
    await store.create_deploy(deploy(), event(), None)
    with pytest.raises(ValidationError):
        await store.save("d-1", new_actions=[Action("d-2", Command(CommandKind.FINALIZE))])


async def test_concurrent_saves_all_land(store: SqlStore) -> None:
    await store.create_deploy(deploy(), event(), None)
    await asyncio.gather(*(store.save("d-1", events=[event(f"e{i}", EventKind.NOTE)]) for i in range(20)))
    assert len(await store.events("d-1")) == 21


# --- timeline --------------------------------------------------------------------------------------


async def test_event_seq_increases_and_after_seq_pages(store: SqlStore) -> None:
    await store.create_deploy(deploy("d-1"), event("created"), None)
    await store.create_deploy(deploy("d-2"), event("other deploy"), None)
    await store.save(
        "d-1", events=[event(f"e{i}", EventKind.NOTE, i=i, nested={"x": [1, 2.5]}) for i in range(3)]
    )
    (action,) = await store.save("d-1", new_actions=[Action("d-1", Command(CommandKind.FINALIZE))])
    await store.update_action(
        action.id, status=ActionStatus.DONE, attempts=1, result={}, event=event("done", EventKind.ACTION_DONE)
    )
    evs = await store.events("d-1")
    assert [e.message for e in evs] == ["created", "e0", "e1", "e2", "done"]
    seqs = [e.seq for e in evs]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs) and seqs[0] > 0
    assert evs[2] == TimelineEvent(
        EventKind.NOTE, "e1", T0 + 1.25, T0 + 2.5, {"i": 1, "nested": {"x": [1, 2.5]}}, seq=seqs[2]
    )
    assert await store.events("d-1", after_seq=seqs[2]) == evs[3:]
    assert await store.events("d-1", after_seq=seqs[-1]) == []
    assert [e.message for e in await store.events("d-2")] == ["other deploy"]


# --- actions ---------------------------------------------------------------------------------------


async def test_actions_filter_by_deploy_and_status(store: SqlStore) -> None:
    for d in ("d-1", "d-2"):
        await store.create_deploy(deploy(d), event(), None)
    a1, a2 = await store.save(
        "d-1",
        new_actions=[
            Action("d-1", Command(CommandKind.APPLY_STEP, 0)),
            Action("d-1", Command(CommandKind.FINALIZE)),
        ],
    )
    (b1,) = await store.save("d-2", new_actions=[Action("d-2", Command(CommandKind.ROLLBACK, reason="slow"))])
    await store.update_action(
        a1.id, status=ActionStatus.DONE, attempts=1, result={"detail": "ok", "out": [1]}
    )
    await store.update_action(b1.id, status=ActionStatus.RUNNING, attempts=1, result={})

    assert [a.id for a in await store.actions()] == [a1.id, a2.id, b1.id]
    assert [a.id for a in await store.actions("d-1")] == [a1.id, a2.id]
    assert [a.id for a in await store.actions(statuses=[ActionStatus.PENDING, ActionStatus.RUNNING])] == [
        a2.id,
        b1.id,
    ]
    assert [a.id for a in await store.actions("d-2", statuses=[ActionStatus.PENDING])] == []
    (done,) = await store.actions(statuses=[ActionStatus.DONE])
    assert done == dataclasses.replace(
        a1, status=ActionStatus.DONE, attempts=1, result={"detail": "ok", "out": [1]}
    )
    assert done.command.key == "apply_step:0"
    assert (await store.actions("d-2"))[0].command == Command(CommandKind.ROLLBACK, reason="slow")


async def test_update_unknown_action_raises_not_found(store: SqlStore) -> None:
    with pytest.raises(NotFoundError):
        await store.update_action(999, status=ActionStatus.DONE, attempts=1, result={})


async def test_update_action_is_atomic_with_its_event(store: SqlStore) -> None:
    await store.create_deploy(deploy(), event(), None)
    (a,) = await store.save("d-1", new_actions=[Action("d-1", Command(CommandKind.FINALIZE))])
    with pytest.raises(ValidationError):
        await store.update_action(
            a.id,
            status=ActionStatus.DONE,
            attempts=1,
            result={},
            event=event("done", EventKind.ACTION_DONE, bad=object()),
        )
    assert await store.actions() == [a]
    assert len(await store.events("d-1")) == 1


# --- samples ---------------------------------------------------------------------------------------


async def test_duplicate_samples_are_ignored_and_not_double_counted(store: SqlStore) -> None:
    await store.create_deploy(deploy(), event(), None)
    c1, b1 = window(Track.CANARY, T0), window(Track.BASELINE, T0)
    c2 = window(Track.CANARY, T0 + 60)
    assert await store.add_samples("d-1", [c1, b1]) == [c1, b1]
    assert await store.add_samples("d-1", [c1, b1, c2, c2]) == [c2]
    assert await store.add_samples("d-1", [dataclasses.replace(c1, requests=999, errors=0)]) == []
    assert await store.add_samples("d-1", []) == []
    stored = await store.samples("d-1")
    assert len(stored) == 3
    assert sum(s.requests for s in stored) == 300


async def test_samples_come_back_ordered_by_end_then_track(store: SqlStore) -> None:
    await store.create_deploy(deploy(), event(), None)
    ws = [window(track, T0 + 60 * i) for i in range(6) for track in Track]
    ws.append(window(Track.CANARY, T0 + 30, length=15))  # a short window ends before the first full one
    shuffled = random.Random(7).sample(ws, len(ws))
    for chunk in (shuffled[:5], shuffled[5:9], shuffled[9:]):
        await store.add_samples("d-1", chunk)
    got = await store.samples("d-1")
    assert got == sorted(ws, key=lambda s: (s.end, s.track.value))
    assert got[0] == ws[-1]


async def test_sample_payload_round_trips(store: SqlStore) -> None:
    await store.create_deploy(deploy(), event(), None)
    full = window(Track.CANARY, T0 + 0.001, length=59.999)
    bare = Sample(track=Track.BASELINE, start=T0, end=T0 + 60, requests=0, errors=0)
    await store.add_samples("d-1", [full, bare])
    assert {s.key: s for s in await store.samples("d-1")} == {full.key: full, bare.key: bare}


async def test_samples_of_an_unknown_deploy_raise_not_found(store: SqlStore) -> None:
    with pytest.raises(NotFoundError):
        await store.add_samples("ghost", [window(Track.CANARY, T0)])


# --- migrations and connections --------------------------------------------------------------------


async def test_upgrade_is_idempotent(empty_db_url: str) -> None:
    assert await current_revision(empty_db_url) is None
    await upgrade(empty_db_url)
    await upgrade(empty_db_url)
    assert await current_revision(empty_db_url) == head_revision()
    async with await SqlStore.open(empty_db_url) as store:
        assert (await store.create_deploy(deploy(), event(), None))[1]


async def test_concurrent_upgrades_do_not_collide(empty_db_url: str) -> None:
    """The service and `guardrail db upgrade` may start together."""
    await asyncio.gather(*(upgrade(empty_db_url) for _ in range(3)))
    assert await current_revision(empty_db_url) == head_revision()


async def test_migrated_schema_matches_tables(empty_db_url: str) -> None:
    """Alembic finds nothing to autogenerate: the migrations and tables.py agree."""
    await upgrade(empty_db_url)
    engine = create_engine(empty_db_url)
    try:
        async with engine.connect() as conn:
            diff = await conn.run_sync(
                lambda c: compare_metadata(
                    MigrationContext.configure(c, opts={"compare_type": True}), metadata
                )
            )
    finally:
        await engine.dispose()
    assert diff == []


async def test_open_refuses_a_database_that_was_not_migrated(empty_db_url: str) -> None:
    with pytest.raises(ConfigError, match="guardrail db upgrade"):
        await SqlStore.open(empty_db_url)
    async with await SqlStore.open(empty_db_url, migrate=True) as store:
        assert await store.list_deploys() == []


async def test_in_memory_sqlite_store_serves_concurrent_callers() -> None:
    async with await SqlStore.open("sqlite+aiosqlite://", migrate=True) as store:
        await store.create_deploy(deploy(), event(), None)
        await asyncio.gather(*(store.save("d-1", events=[event(f"e{i}")]) for i in range(10)))
        assert len(await store.events("d-1")) == 11


async def test_unreachable_database_raises_store_error() -> None:
    store = SqlStore("postgresql+asyncpg://guardrail:pw@127.0.0.1:1/none", connect_timeout=2.0)
    try:
        with pytest.raises(StoreError) as err:
            await store.get_deploy("d-1")
        assert "pw" not in str(err.value)
    finally:
        await store.close()


@pytest.mark.parametrize("url", ["mysql://x@y/z", "sqlite+pysqlite:///x.db", "not a url"])
def test_unsupported_urls_fail_fast(url: str) -> None:
    with pytest.raises(ConfigError, match="sqlite\\+aiosqlite"):
        SqlStore(url)


# --- codec -----------------------------------------------------------------------------------------


def test_codec_covers_every_field_of_every_record() -> None:
    """A field added to a domain record must be added to its codec spec (or it would not be stored)."""
    for cls, spec in codec.SPECS.items():
        assert set(spec) == {f.name for f in dataclasses.fields(cls)}, cls.__name__


def test_codec_decodes_rows_written_before_a_defaulted_field_existed() -> None:
    r = deploy().rollout
    old = {k: v for k, v in codec.rollout_to_dict(r).items() if k != "history"}
    assert codec.rollout_from_dict(old) == r


def test_json_text_is_strict_and_keeps_non_finite_floats() -> None:
    v = {"a": [math.inf, -math.inf, 1.5, None], "b": {"c": (1, 2)}}
    text = codec.dumps(v)
    assert "Infinity" not in text and "NaN" not in codec.dumps(math.nan)
    assert codec.loads(text) == {"a": [math.inf, -math.inf, 1.5, None], "b": {"c": [1, 2]}}
    assert math.isnan(codec.loads(codec.dumps(math.nan)))
    with pytest.raises(TypeError):
        codec.dumps({"x": object()})


def test_sqlstore_has_every_store_method_with_the_same_parameters() -> None:
    for name, proto in inspect.getmembers(Store, inspect.isfunction):
        if name.startswith("_"):
            continue
        ours = getattr(SqlStore, name)
        assert inspect.iscoroutinefunction(ours), name
        want = [(p.name, p.kind, p.default) for p in inspect.signature(proto).parameters.values()]
        got = [(p.name, p.kind, p.default) for p in inspect.signature(ours).parameters.values()]
        assert got == want, name
