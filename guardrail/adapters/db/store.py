"""``SqlStore``: the :class:`guardrail.ports.Store` on SQLAlchemy 2 async, SQLite or PostgreSQL.

Every method is one transaction. Driver errors leave as ``guardrail.domain.errors`` (see
:func:`guardrail.adapters.db.engine.translate_errors`); messages never carry SQL parameters, since
a marker's adapter config may hold secrets.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import replace
from typing import Any

from sqlalchemy import Double, Row, case, cast, func, insert, literal, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from guardrail.adapters.db import codec
from guardrail.adapters.db import tables as t
from guardrail.adapters.db.engine import (
    WRITE,
    StoreError,
    create_engine,
    is_memory,
    parse_url,
    translate_errors,
)
from guardrail.adapters.db.migrate import current_revision_engine, head_revision, upgrade_engine
from guardrail.domain.drafts import Draft, DraftKind
from guardrail.domain.errors import ConfigError, ConflictError, LeaseLostError, NotFoundError, ValidationError
from guardrail.domain.model import DeployState, Sample
from guardrail.domain.outbox import Delivery, DeliveryStatus, Incident, IncidentState, OutboxSummary
from guardrail.domain.records import Action, ActionStatus, Deploy, EventKind, Lease, TimelineEvent
from guardrail.domain.rollout import Command, CommandKind, Rollout

TERMINAL_STATES = tuple(s.value for s in DeployState if s.terminal)


class SqlStore:
    """Durable records in SQLite (``sqlite+aiosqlite:///path.db``) or PostgreSQL
    (``postgresql+asyncpg://user@host/db``). The schema must be migrated first
    (:func:`guardrail.adapters.db.migrate.upgrade`, or ``SqlStore.open(url, migrate=True)``).

    ``clock`` stamps ``updated_at`` on :meth:`save` and the actions' created/updated times.
    """

    def __init__(
        self,
        url: str,
        *,
        echo: bool = False,
        clock: Callable[[], float] = time.time,
        connect_timeout: float = 10.0,
        statement_timeout: float = 30.0,
    ) -> None:
        u = parse_url(url)
        self._engine = create_engine(
            u, echo=echo, connect_timeout=connect_timeout, statement_timeout=statement_timeout
        )
        self._writer = self._engine.execution_options(**{WRITE: True})
        self._clock = clock
        self._dialect = u.get_backend_name()
        # SQLite has one writer at a time: queue this process's writers on a lock rather than on
        # SQLite's sleeping busy handler (which remains for other processes, e.g. the CLI). An
        # in-memory database is a single shared connection: readers take turns too.
        sqlite_ = self._dialect == "sqlite"
        self._write_turn = asyncio.Lock() if sqlite_ else None
        self._read_turn = self._write_turn if is_memory(u) else None

    @classmethod
    async def open(cls, url: str, *, migrate: bool = False, **kw: Any) -> SqlStore:
        """Connect and check the schema is current (or migrate it to head with ``migrate=True``)."""
        store = cls(url, **kw)
        try:
            if migrate:
                await upgrade_engine(store._engine)
            else:
                at, head = await current_revision_engine(store._engine), head_revision()
                if at != head:
                    raise ConfigError(
                        f"database schema is at revision {at or 'none (empty database)'}, this guardrail "
                        f"needs {head}: run `guardrail db upgrade`",
                        field="database_url",
                    )
        except BaseException:
            await store.close()
            raise
        return store

    async def close(self) -> None:
        await self._engine.dispose()

    async def __aenter__(self) -> SqlStore:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # --- transactions --------------------------------------------------------------------------

    @staticmethod
    @contextlib.asynccontextmanager
    async def _turn(lock: asyncio.Lock | None) -> AsyncIterator[None]:
        if lock is None:
            yield
        else:
            async with lock:
                yield

    @contextlib.asynccontextmanager
    async def _write(self, what: str, *, missing: str | None = None) -> AsyncIterator[AsyncConnection]:
        async with self._turn(self._write_turn):
            with translate_errors(what, missing=missing):
                async with self._writer.begin() as conn:
                    yield conn

    @contextlib.asynccontextmanager
    async def _read(self, what: str) -> AsyncIterator[AsyncConnection]:
        async with self._turn(self._read_turn):
            with translate_errors(what):
                async with self._engine.connect() as conn:
                    yield conn

    # --- deploys -------------------------------------------------------------------------------

    async def create_deploy(
        self, deploy: Deploy, event: TimelineEvent, idempotency_key: str | None
    ) -> tuple[Deploy, bool]:
        row = {
            "id": deploy.id,
            "service": deploy.marker.service,
            "environment": deploy.marker.environment,
            "version": deploy.marker.version,
            "state": deploy.state.value,
            "idempotency_key": idempotency_key,
            "created_at": deploy.created_at,
            "updated_at": deploy.updated_at,
            "data_time": deploy.data_time,
            "marker": codec.marker_to_dict(deploy.marker),
            "rollout": codec.rollout_to_dict(deploy.rollout),
            "verdict": deploy.verdict,
        }
        try:
            async with self._write(f"recording deploy {deploy.id}") as conn:
                if idempotency_key is not None:
                    existing = await self._deploy_by_key(conn, idempotency_key)
                    if existing is not None:
                        return existing, False
                await conn.execute(insert(t.deploys).values(row))
                await self._insert_events(conn, deploy.id, (event,))
        except ConflictError:
            # Lost a race for the idempotency key (or the id is taken): the winner is committed now.
            if idempotency_key is not None:
                async with self._read(f"reading deploy with idempotency key {idempotency_key}") as conn:
                    existing = await self._deploy_by_key(conn, idempotency_key)
                if existing is not None:
                    return existing, False
            raise ConflictError(f"a deploy with id {deploy.id!r} is already recorded", field="id") from None
        return deploy, True

    async def deploy_by_key(self, idempotency_key: str) -> Deploy | None:
        async with self._read("reading a deploy by its idempotency key") as conn:
            return await self._deploy_by_key(conn, idempotency_key)

    async def get_deploy(self, deploy_id: str) -> Deploy | None:
        async with self._read(f"reading deploy {deploy_id}") as conn:
            row = (await conn.execute(select(t.deploys).where(t.deploys.c.id == deploy_id))).first()
        return None if row is None else _deploy(row)

    async def list_deploys(
        self,
        *,
        service: str | None = None,
        environment: str | None = None,
        state: DeployState | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int = 100,
    ) -> list[Deploy]:
        """Newest first; ``since <= created_at <= until`` (both inclusive)."""
        if limit < 1:
            raise ValidationError(f"limit must be at least 1, got {limit}", field="limit")
        q = select(t.deploys)
        if service is not None:
            q = q.where(t.deploys.c.service == service)
        if environment is not None:
            q = q.where(t.deploys.c.environment == environment)
        if state is not None:
            q = q.where(t.deploys.c.state == DeployState(state).value)
        if since is not None:
            q = q.where(t.deploys.c.created_at >= since)
        if until is not None:
            q = q.where(t.deploys.c.created_at <= until)
        q = q.order_by(t.deploys.c.created_at.desc(), t.deploys.c.id.desc()).limit(limit)
        async with self._read("listing deploys") as conn:
            rows = (await conn.execute(q)).all()
        return [_deploy(r) for r in rows]

    async def active_deploys(self) -> list[Deploy]:
        """Oldest first."""
        q = (
            select(t.deploys)
            .where(t.deploys.c.state.not_in(TERMINAL_STATES))
            .order_by(t.deploys.c.created_at, t.deploys.c.id)
        )
        async with self._read("listing active deploys") as conn:
            rows = (await conn.execute(q)).all()
        return [_deploy(r) for r in rows]

    async def save(
        self,
        deploy_id: str,
        *,
        rollout: Rollout | None = None,
        data_time: float | None = None,
        verdict: dict[str, Any] | None = None,
        events: Sequence[TimelineEvent] = (),
        new_actions: Sequence[Action] = (),
        lease: Lease | None = None,
    ) -> list[Action]:
        """One transaction: update what is given (and ``updated_at`` from the clock), append the
        events, record the actions. Returns the actions with their ids, in the order given. With
        ``lease``, nothing is written (``LeaseLostError``) unless the lease is still held."""
        for a in new_actions:
            if a.deploy_id != deploy_id:
                raise ValidationError(
                    f"action {a.command.key} belongs to deploy {a.deploy_id!r}, not {deploy_id!r}",
                    field="new_actions",
                )
        now = self._clock()
        values: dict[str, Any] = {"updated_at": now}
        if rollout is not None:
            values["rollout"] = codec.rollout_to_dict(rollout)
            values["state"] = rollout.state.value
        if data_time is not None:
            values["data_time"] = data_time
        if verdict is not None:
            values["verdict"] = verdict
        stored: list[Action] = []
        async with self._write(f"saving deploy {deploy_id}") as conn:
            fence = self._fence(lease) if lease is not None else ()
            res = await conn.execute(
                update(t.deploys).where(t.deploys.c.id == deploy_id, *fence).values(values)
            )
            if res.rowcount == 0:
                if lease is not None and await self._exists(conn, deploy_id):
                    raise self._lost(lease)
                raise NotFoundError(f"deploy {deploy_id!r} not found", field="deploy_id")
            await self._insert_events(conn, deploy_id, events)
            for a in new_actions:
                res = await conn.execute(insert(t.actions).values(_action_row(a, now)))
                stored.append(replace(a, id=int(res.inserted_primary_key[0])))
        return stored

    # --- leases: several replicas on one database ----------------------------------------------
    #
    # Expiry is computed in SQL from the database's clock (``_db_now``), never from a replica's, so a
    # replica whose clock runs fast or slow neither steals a live lease nor keeps a dead one. Each
    # change of hands adds one to ``lease_token``; writes under a lease (``save``, ``update_action``
    # with ``lease=``) check owner and token in the same statement and raise ``LeaseLostError`` when
    # another replica took over meanwhile.

    def _db_now(self) -> Any:
        """The database's clock now, in unix seconds (double precision)."""
        if self._dialect == "postgresql":
            return cast(func.extract("epoch", func.clock_timestamp()), Double())
        return (func.julianday("now") - literal(2440587.5)) * literal(86400.0)

    def _free(self, owner: str) -> Any:
        d = t.deploys
        return (d.c.lease_owner.is_(None)) | (d.c.lease_owner == owner) | (d.c.lease_until < self._db_now())

    def _takeover(self, owner: str, ttl_s: float) -> dict[str, Any]:
        """The values that give a free deploy's lease to ``owner`` (a new token if it changes hands)."""
        d = t.deploys
        return {
            "lease_owner": owner,
            "lease_until": self._db_now() + literal(float(ttl_s)),
            "lease_token": case((d.c.lease_owner == owner, d.c.lease_token), else_=d.c.lease_token + 1),
            "last_owner": owner,
        }

    async def acquire_lease(self, deploy_id: str, owner: str, *, ttl_s: float) -> Lease | None:
        """Take the deploy's lease for ``owner`` for ``ttl_s`` seconds (database clock) if it is free,
        expired or already ``owner``'s. None when another replica holds it."""
        d = t.deploys
        async with self._write(f"leasing deploy {deploy_id}") as conn:
            q = select(d.c.last_owner).where(d.c.id == deploy_id)
            if self._dialect == "postgresql":
                q = q.with_for_update()  # the last owner read is the one this update replaces
            before = (await conn.execute(q)).first()
            if before is None:
                raise NotFoundError(f"no deploy with id {deploy_id!r}", field="id")
            row = (
                await conn.execute(
                    update(d)
                    .where(d.c.id == deploy_id, self._free(owner))
                    .values(self._takeover(owner, ttl_s))
                    .returning(d.c.lease_token)
                )
            ).first()
        if row is None:
            return None
        return Lease(deploy_id, owner, int(row.lease_token), before.last_owner)

    async def renew_lease(self, lease: Lease, *, ttl_s: float) -> bool:
        """Extend a lease still held; False when another replica took it over."""
        d = t.deploys
        async with self._write(f"renewing the lease of deploy {lease.deploy_id}") as conn:
            res = await conn.execute(
                update(d)
                .where(d.c.id == lease.deploy_id, *self._fence(lease))
                .values(lease_until=self._db_now() + literal(float(ttl_s)))
            )
        return res.rowcount == 1

    async def release_lease(self, lease: Lease) -> None:
        d = t.deploys
        async with self._write(f"releasing the lease of deploy {lease.deploy_id}") as conn:
            await conn.execute(
                update(d)
                .where(d.c.id == lease.deploy_id, *self._fence(lease))
                .values(lease_owner=None, lease_until=None)
            )

    @staticmethod
    def _fence(lease: Lease) -> tuple[Any, ...]:
        d = t.deploys
        return (d.c.lease_owner == lease.owner, d.c.lease_token == lease.token)

    async def claim_deploys(
        self, owner: str, *, ttl_s: float, limit: int = 100, ids: Sequence[str] | None = None
    ) -> list[Lease]:
        """Active deploys (optionally only ``ids``) whose lease is free or expired, leased to ``owner``
        (PostgreSQL: ``FOR UPDATE SKIP LOCKED``, so replicas sweeping at once split the work instead of
        queueing)."""
        d = t.deploys
        q = (
            select(d.c.id, d.c.last_owner)
            .where(d.c.state.not_in(TERMINAL_STATES), self._free(owner))
            .order_by(d.c.updated_at)
            .limit(limit)
        )
        if ids is not None:
            if not ids:
                return []
            q = q.where(d.c.id.in_(list(ids)))
        if self._dialect == "postgresql":
            q = q.with_for_update(skip_locked=True, of=d)
        async with self._write("claiming deploys") as conn:
            rows = (await conn.execute(q)).all()
            if not rows:
                return []
            last = {r.id: r.last_owner for r in rows}
            got = (
                await conn.execute(
                    update(d)
                    .where(d.c.id.in_(list(last)), self._free(owner))
                    .values(self._takeover(owner, ttl_s))
                    .returning(d.c.id, d.c.lease_token)
                )
            ).all()
        return [Lease(r.id, owner, int(r.lease_token), last[r.id]) for r in sorted(got, key=lambda r: r.id)]

    async def data_arrivals(self) -> dict[str, float]:
        """For each analysing deploy: when data last arrived (wall time), or its creation before any."""
        d = t.deploys
        q = select(d.c.id, func.coalesce(d.c.last_data_at, d.c.created_at)).where(
            d.c.state == DeployState.ANALYZING.value
        )
        async with self._read("reading when data last arrived") as conn:
            return {r[0]: float(r[1]) for r in (await conn.execute(q)).all()}

    async def state_counts(self) -> dict[DeployState, int]:
        """How many deploys are in each state that is not terminal."""
        d = t.deploys
        q = select(d.c.state, func.count()).where(d.c.state.not_in(TERMINAL_STATES)).group_by(d.c.state)
        async with self._read("counting deploys by state") as conn:
            return {DeployState(r[0]): int(r[1]) for r in (await conn.execute(q)).all()}

    # --- drafts --------------------------------------------------------------------------------

    async def add_draft(self, draft: Draft) -> Draft:
        """Store ``draft`` as the next version of its (deploy, kind); returns it with its version."""
        for attempt in range(3):
            try:
                async with self._write(f"storing a {draft.kind} draft of deploy {draft.deploy_id}") as conn:
                    # the deploy's row lock serialises concurrent drafts of it (PostgreSQL; SQLite has
                    # one writer anyway), so each gets the next version instead of a unique-key clash
                    owner = select(t.deploys.c.id).where(t.deploys.c.id == draft.deploy_id)
                    if self._dialect == "postgresql":
                        owner = owner.with_for_update()
                    if (await conn.execute(owner)).first() is None:
                        raise NotFoundError(f"no deploy with id {draft.deploy_id!r}", field="id")
                    top = (
                        await conn.execute(
                            select(func.max(t.drafts.c.version)).where(
                                t.drafts.c.deploy_id == draft.deploy_id, t.drafts.c.kind == draft.kind.value
                            )
                        )
                    ).scalar()
                    stored = replace(draft, version=int(top or 0) + 1)
                    await conn.execute(
                        insert(t.drafts).values(
                            deploy_id=stored.deploy_id,
                            kind=stored.kind.value,
                            version=stored.version,
                            markdown=stored.markdown,
                            source=stored.source,
                            note=stored.note,
                            trigger=stored.trigger,
                            created_at=stored.created_at,
                        )
                    )
                return stored
            except ConflictError:
                if attempt == 2:  # another writer took the version each time; or the deploy is gone
                    if await self.get_deploy(draft.deploy_id) is None:
                        raise NotFoundError(f"no deploy with id {draft.deploy_id!r}", field="id") from None
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def drafts(
        self, deploy_id: str, kind: DraftKind | None = None, *, version: int | None = None
    ) -> list[Draft]:
        """Drafts of a deploy, newest first (optionally one kind, or one version of it)."""
        q = select(t.drafts).where(t.drafts.c.deploy_id == deploy_id)
        if kind is not None:
            q = q.where(t.drafts.c.kind == DraftKind(kind).value)
        if version is not None:
            q = q.where(t.drafts.c.version == version)
        q = q.order_by(t.drafts.c.created_at.desc(), t.drafts.c.id.desc())
        async with self._read(f"reading drafts of deploy {deploy_id}") as conn:
            rows = (await conn.execute(q)).all()
        return [
            Draft(
                deploy_id=r.deploy_id,
                kind=DraftKind(r.kind),
                version=r.version,
                markdown=r.markdown,
                source=r.source,
                note=r.note,
                created_at=r.created_at,
                trigger=r.trigger,
            )
            for r in rows
        ]

    # --- samples -------------------------------------------------------------------------------

    async def add_samples(self, deploy_id: str, samples: Sequence[Sample]) -> list[Sample]:
        unique: dict[tuple[str, float, float], Sample] = {}
        for s in samples:
            unique.setdefault(s.key, s)  # a window repeated within the call counts once
        if not unique:
            return []
        rows = [
            {
                "deploy_id": deploy_id,
                "track": s.track.value,
                "start": s.start,
                "end": s.end,
                "payload": codec.sample_to_dict(s),
            }
            for s in unique.values()
        ]
        dialect_insert = postgresql.insert if self._dialect == "postgresql" else sqlite.insert
        stmt = (
            dialect_insert(t.samples)
            .on_conflict_do_nothing(index_elements=["deploy_id", "track", "start", "end"])
            .returning(t.samples.c.track, t.samples.c.start, t.samples.c.end)
        )
        async with self._write(
            f"storing samples of deploy {deploy_id}", missing=f"deploy {deploy_id!r} not found"
        ) as conn:
            new = {(r.track, r.start, r.end) for r in await conn.execute(stmt, rows)}
            if new:
                await conn.execute(
                    update(t.deploys).where(t.deploys.c.id == deploy_id).values(last_data_at=self._clock())
                )
        return [s for k, s in unique.items() if k in new]

    async def samples(self, deploy_id: str) -> list[Sample]:
        q = (
            select(t.samples.c.payload)
            .where(t.samples.c.deploy_id == deploy_id)
            .order_by(t.samples.c.end, t.samples.c.track, t.samples.c.start, t.samples.c.id)
        )
        async with self._read(f"reading samples of deploy {deploy_id}") as conn:
            payloads = (await conn.execute(q)).scalars().all()
        return [_decode(codec.sample_from_dict, p, f"a sample of deploy {deploy_id}") for p in payloads]

    # --- timeline and intent log ---------------------------------------------------------------

    async def events(self, deploy_id: str, *, after_seq: int = 0) -> list[TimelineEvent]:
        q = (
            select(t.events)
            .where(t.events.c.deploy_id == deploy_id, t.events.c.id > after_seq)
            .order_by(t.events.c.id)
        )
        async with self._read(f"reading the timeline of deploy {deploy_id}") as conn:
            rows = (await conn.execute(q)).all()
        return [
            TimelineEvent(
                kind=EventKind(r.kind),
                message=r.message,
                data_time=r.data_time,
                wall_time=r.wall_time,
                details=r.details,
                seq=r.id,
            )
            for r in rows
        ]

    async def actions(
        self, deploy_id: str | None = None, *, statuses: Sequence[ActionStatus] = ()
    ) -> list[Action]:
        q = select(t.actions).order_by(t.actions.c.id)
        if deploy_id is not None:
            q = q.where(t.actions.c.deploy_id == deploy_id)
        if statuses:
            q = q.where(t.actions.c.status.in_([ActionStatus(s).value for s in statuses]))
        async with self._read("reading actions") as conn:
            rows = (await conn.execute(q)).all()
        return [_action(r) for r in rows]

    async def update_action(
        self,
        action_id: int,
        *,
        status: ActionStatus,
        attempts: int,
        result: dict[str, Any],
        event: TimelineEvent | None = None,
        lease: Lease | None = None,
    ) -> None:
        """Record an action's outcome and, in the same transaction, its timeline event. With
        ``lease``, nothing is written (``LeaseLostError``) unless the deploy's lease is still held."""
        async with self._write(f"updating action {action_id}") as conn:
            deploy_id = (
                await conn.execute(select(t.actions.c.deploy_id).where(t.actions.c.id == action_id))
            ).scalar_one_or_none()
            if deploy_id is None:
                raise NotFoundError(f"action {action_id} not found", field="action_id")
            where = [t.actions.c.id == action_id]
            if lease is not None:
                d = t.deploys
                held = select(d.c.id).where(d.c.id == t.actions.c.deploy_id, *self._fence(lease)).exists()
                where.append(held)
            res = await conn.execute(
                update(t.actions)
                .where(*where)
                .values(
                    status=ActionStatus(status).value,
                    attempts=attempts,
                    result=result,
                    updated_at=self._clock(),
                )
            )
            if res.rowcount == 0 and lease is not None:
                raise self._lost(lease)
            if event is not None:
                await self._insert_events(conn, deploy_id, (event,))

    # --- notifications: incidents and the outbox ------------------------------------------------

    async def get_incident(self, key: str) -> Incident | None:
        async with self._read(f"reading incident {key}") as conn:
            row = (await conn.execute(select(t.incidents).where(t.incidents.c.key == key))).first()
        return None if row is None else _incident(row)

    async def incidents(
        self, *, state: IncidentState | None = None, deploy_id: str | None = None
    ) -> list[Incident]:
        """Incidents, oldest opened first, optionally only those in ``state`` or of one deploy."""
        q = select(t.incidents).order_by(t.incidents.c.opened_at, t.incidents.c.key)
        if state is not None:
            q = q.where(t.incidents.c.state == IncidentState(state).value)
        if deploy_id is not None:
            q = q.where(t.incidents.c.deploy_id == deploy_id)
        async with self._read("reading incidents") as conn:
            rows = (await conn.execute(q)).all()
        return [_incident(r) for r in rows]

    async def open_incident(self, incident: Incident, deliveries: Sequence[Delivery]) -> bool:
        """One transaction: open ``incident.key`` (a new key, or one resolved before) and queue the
        deliveries. A key already open changes nothing and queues nothing: returns False."""
        n = incident.notice
        row = {
            "key": incident.key,
            "state": IncidentState.OPEN.value,
            "rule": n.rule,
            "deploy_id": n.deploy_id,
            "service": n.service,
            "environment": n.environment,
            "severity": n.severity.value,
            "notice": codec.notice_to_dict(n),
            "notifiers": list(incident.notifiers),
            "opened_at": incident.opened_at,
            "resolved_at": None,
        }
        dialect_insert = postgresql.insert if self._dialect == "postgresql" else sqlite.insert
        new = (
            dialect_insert(t.incidents)
            .values(row)
            .on_conflict_do_nothing(index_elements=["key"])
            .returning(t.incidents.c.key)
        )
        async with self._write(f"opening incident {incident.key}") as conn:
            opened = (await conn.execute(new)).first() is not None
            if not opened:  # known key: reopen it only if it was resolved (row lock: one reopener wins)
                res = await conn.execute(
                    update(t.incidents)
                    .where(
                        t.incidents.c.key == incident.key,
                        t.incidents.c.state == IncidentState.RESOLVED.value,
                    )
                    .values({k: v for k, v in row.items() if k != "key"})
                )
                opened = res.rowcount == 1
            if opened:
                await self._insert_deliveries(conn, deliveries)
        return opened

    async def resolve_incident(self, key: str, *, resolved_at: float, deliveries: Sequence[Delivery]) -> bool:
        """One transaction: resolve ``key`` if it is open and queue the deliveries. A key that is not
        open (unknown, or resolved already) changes nothing and queues nothing: returns False."""
        async with self._write(f"resolving incident {key}") as conn:
            res = await conn.execute(
                update(t.incidents)
                .where(t.incidents.c.key == key, t.incidents.c.state == IncidentState.OPEN.value)
                .values(state=IncidentState.RESOLVED.value, resolved_at=resolved_at)
            )
            if res.rowcount != 1:
                return False
            await self._insert_deliveries(conn, deliveries)
        return True

    async def enqueue(self, deliveries: Sequence[Delivery]) -> list[Delivery]:
        """Queue deliveries with no incident (announcements), in one transaction. Returns them with ids."""
        if not deliveries:
            return []
        async with self._write("queueing notifications") as conn:
            return await self._insert_deliveries(conn, deliveries)

    async def claim_deliveries(self, *, now: float, lease_s: float, limit: int = 100) -> list[Delivery]:
        """Pending deliveries due at ``now`` (oldest first), claimed: their ``next_attempt_at`` moves
        to ``now + lease_s`` (so no other dispatcher takes them meanwhile, and a crash mid-send only
        delays them) and ``attempts`` grows by one. A delivery waits while an earlier delivery of the
        same key to the same notifier is pending: a resolve never overtakes its trigger."""
        n = t.notifications
        q = (
            select(n)
            .where(n.c.status == DeliveryStatus.PENDING.value, n.c.next_attempt_at <= now, ~_blocked())
            .order_by(n.c.id)
            .limit(limit)
        )
        if self._dialect == "postgresql":
            q = q.with_for_update(skip_locked=True, of=n)
        async with self._write("claiming notifications") as conn:
            rows = (await conn.execute(q)).all()
            if not rows:
                return []
            until = now + lease_s
            await conn.execute(
                update(n)
                .where(n.c.id.in_([r.id for r in rows]))
                .values(next_attempt_at=until, attempts=n.c.attempts + 1)
            )
        return [replace(_delivery(r), attempts=r.attempts + 1, next_attempt_at=until) for r in rows]

    async def mark_delivery_sent(self, delivery_id: int, *, sent_at: float) -> None:
        await self._finish_delivery(delivery_id, status=DeliveryStatus.SENT, sent_at=sent_at)

    async def mark_delivery_failed(self, delivery_id: int, *, error: str) -> None:
        """Give up on a delivery (a non-retryable answer)."""
        await self._finish_delivery(delivery_id, status=DeliveryStatus.FAILED, last_error=error)

    async def reschedule_delivery(self, delivery_id: int, *, next_attempt_at: float, error: str) -> None:
        """Keep a delivery pending, due again at ``next_attempt_at`` (a retryable failure)."""
        await self._finish_delivery(
            delivery_id, status=DeliveryStatus.PENDING, next_attempt_at=next_attempt_at, last_error=error
        )

    async def deliveries(
        self,
        *,
        statuses: Sequence[DeliveryStatus] = (),
        key: str | None = None,
        notifier: str | None = None,
        limit: int = 1000,
    ) -> list[Delivery]:
        """Outbox rows in id order, optionally filtered."""
        q = select(t.notifications).order_by(t.notifications.c.id).limit(limit)
        if statuses:
            q = q.where(t.notifications.c.status.in_([DeliveryStatus(s).value for s in statuses]))
        if key is not None:
            q = q.where(t.notifications.c.key == key)
        if notifier is not None:
            q = q.where(t.notifications.c.notifier == notifier)
        async with self._read("reading notifications") as conn:
            rows = (await conn.execute(q)).all()
        return [_delivery(r) for r in rows]

    async def outbox_summary(self) -> OutboxSummary:
        """Pending rows: how many, the oldest's creation, and when the next one that is not waiting
        behind an earlier row of its key falls due."""
        n = t.notifications
        pending = n.c.status == DeliveryStatus.PENDING.value
        q = select(func.count(), func.min(n.c.created_at)).where(pending)
        due = select(func.min(n.c.next_attempt_at)).where(pending, ~_blocked())
        async with self._read("reading the outbox") as conn:
            count, oldest = (await conn.execute(q)).one()
            next_due = (await conn.execute(due)).scalar()
        return OutboxSummary(pending=int(count), oldest_pending_at=oldest, next_due_at=next_due)

    async def _finish_delivery(
        self,
        delivery_id: int,
        *,
        status: DeliveryStatus,
        sent_at: float | None = None,
        next_attempt_at: float | None = None,
        last_error: str | None = None,
    ) -> None:
        values: dict[str, Any] = {"status": DeliveryStatus(status).value}
        if sent_at is not None:
            values["sent_at"] = sent_at
        if next_attempt_at is not None:
            values["next_attempt_at"] = next_attempt_at
        if last_error is not None:
            values["last_error"] = last_error
        async with self._write(f"updating notification {delivery_id}") as conn:
            res = await conn.execute(
                update(t.notifications).where(t.notifications.c.id == delivery_id).values(values)
            )
            if res.rowcount == 0:
                raise NotFoundError(f"notification {delivery_id} not found", field="delivery_id")

    @staticmethod
    async def _insert_deliveries(conn: AsyncConnection, deliveries: Sequence[Delivery]) -> list[Delivery]:
        stored = []
        for d in deliveries:
            res = await conn.execute(
                insert(t.notifications).values(
                    notifier=d.notifier,
                    key=d.notice.key,
                    action=d.notice.action.value,
                    severity=d.notice.severity.value,
                    notice=codec.notice_to_dict(d.notice),
                    status=DeliveryStatus(d.status).value,
                    attempts=d.attempts,
                    next_attempt_at=d.next_attempt_at,
                    last_error=d.last_error,
                    created_at=d.created_at,
                    sent_at=d.sent_at,
                )
            )
            stored.append(replace(d, id=int(res.inserted_primary_key[0])))
        return stored

    # --- helpers -------------------------------------------------------------------------------

    @staticmethod
    async def _exists(conn: AsyncConnection, deploy_id: str) -> bool:
        return (
            await conn.execute(select(t.deploys.c.id).where(t.deploys.c.id == deploy_id))
        ).first() is not None

    @staticmethod
    def _lost(lease: Lease) -> LeaseLostError:
        return LeaseLostError(
            f"the lease of deploy {lease.deploy_id} was taken over by another replica; nothing was written",
            field="id",
        )

    @staticmethod
    async def _deploy_by_key(conn: AsyncConnection, key: str) -> Deploy | None:
        row = (await conn.execute(select(t.deploys).where(t.deploys.c.idempotency_key == key))).first()
        return None if row is None else _deploy(row)

    @staticmethod
    async def _insert_events(conn: AsyncConnection, deploy_id: str, evs: Sequence[TimelineEvent]) -> None:
        # One statement per event, in order: the autoincrement id is the event's seq.
        for e in evs:
            await conn.execute(
                insert(t.events).values(
                    deploy_id=deploy_id,
                    kind=EventKind(e.kind).value,
                    message=e.message,
                    data_time=e.data_time,
                    wall_time=e.wall_time,
                    details=e.details,
                )
            )


def _decode(fn: Callable[[Any], Any], data: Any, what: str) -> Any:
    try:
        return fn(data)
    except (KeyError, TypeError, ValueError) as e:
        raise StoreError(f"{what} cannot be read ({type(e).__name__}: {e})") from None


def _deploy(r: Row[Any]) -> Deploy:
    what = f"stored deploy {r.id}"
    return Deploy(
        id=r.id,
        marker=_decode(codec.marker_from_dict, r.marker, what),
        rollout=_decode(codec.rollout_from_dict, r.rollout, what),
        created_at=r.created_at,
        updated_at=r.updated_at,
        data_time=r.data_time,
        verdict=r.verdict,
    )


def _action_row(a: Action, now: float) -> dict[str, Any]:
    return {
        "deploy_id": a.deploy_id,
        "key": a.command.key,
        "kind": a.command.kind.value,
        "step": a.command.step,
        "reason": a.command.reason,
        "status": ActionStatus(a.status).value,
        "attempts": a.attempts,
        "result": a.result,
        "created_at": now,
        "updated_at": now,
    }


def _action(r: Row[Any]) -> Action:
    return Action(
        id=r.id,
        deploy_id=r.deploy_id,
        command=Command(kind=CommandKind(r.kind), step=r.step, reason=r.reason),
        status=ActionStatus(r.status),
        attempts=r.attempts,
        result=r.result,
        updated_at=r.updated_at,
    )


def _blocked() -> Any:
    """True for an outbox row with an earlier pending row of the same key and notifier."""
    n = t.notifications
    earlier = t.notifications.alias("earlier")
    return (
        select(earlier.c.id)
        .where(
            earlier.c.notifier == n.c.notifier,
            earlier.c.key == n.c.key,
            earlier.c.status == DeliveryStatus.PENDING.value,
            earlier.c.id < n.c.id,
        )
        .exists()
    )


def _delivery(r: Row[Any]) -> Delivery:
    return Delivery(
        id=r.id,
        notifier=r.notifier,
        notice=_decode(codec.notice_from_dict, r.notice, f"stored notification {r.id}"),
        status=DeliveryStatus(r.status),
        attempts=r.attempts,
        next_attempt_at=r.next_attempt_at,
        last_error=r.last_error,
        created_at=r.created_at,
        sent_at=r.sent_at,
    )


def _incident(r: Row[Any]) -> Incident:
    return Incident(
        key=r.key,
        state=IncidentState(r.state),
        notice=_decode(codec.notice_from_dict, r.notice, f"stored incident {r.key}"),
        notifiers=tuple(r.notifiers),
        opened_at=r.opened_at,
        resolved_at=r.resolved_at,
    )


__all__ = ["TERMINAL_STATES", "SqlStore", "StoreError"]
