"""The schema, as SQLAlchemy Core tables. Portable between SQLite and PostgreSQL.

Timestamps are unix seconds in double precision (``Double``: DOUBLE PRECISION on PostgreSQL, REAL
on SQLite), so sub-second precision survives. JSON columns use ``sqlalchemy.JSON`` (``json`` on
PostgreSQL, text on SQLite) and the engine's :func:`guardrail.adapters.db.codec.dumps`.

Changing anything here needs a new migration in ``migrations/versions``; the integration tests
compare a migrated database with this metadata.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    Column,
    Double,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# SQLite only autoincrements an INTEGER PRIMARY KEY; PostgreSQL gets a 64-bit identity.
Id = BigInteger().with_variant(Integer(), "sqlite")

deploys = Table(
    "deploys",
    metadata,
    Column("id", String(), primary_key=True),
    Column("service", String(), nullable=False),
    Column("environment", String(), nullable=False),
    Column("version", String(), nullable=False),
    Column("state", String(), nullable=False),  # copy of rollout.state, for filtering
    Column("idempotency_key", String(), nullable=True, unique=True),
    Column("created_at", Double(), nullable=False),
    Column("updated_at", Double(), nullable=False),
    Column("data_time", Double(), nullable=False),
    Column("marker", JSON(), nullable=False),
    Column("rollout", JSON(), nullable=False),
    Column("verdict", JSON(none_as_null=True), nullable=True),
    # several replicas: the replica analysing this deploy, and until when (wall time)
    Column("lease_owner", String(), nullable=True),
    Column("lease_until", Double(), nullable=True),  # unix seconds on the database's clock
    # fencing: +1 each time the lease changes hands; writes under a lease check it in the same statement
    Column("lease_token", BigInteger(), nullable=False, server_default="0"),
    Column("last_owner", String(), nullable=True),  # the replica that held the lease last
    Column("last_data_at", Double(), nullable=True),  # wall time new samples last arrived (any replica)
    Index(None, "service", "environment", "created_at"),
    Index(None, "state"),
    Index(None, "created_at"),
)

events = Table(
    "events",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),  # the event's seq
    Column("deploy_id", String(), ForeignKey("deploys.id", ondelete="CASCADE"), nullable=False),
    Column("kind", String(), nullable=False),
    Column("message", Text(), nullable=False),
    Column("data_time", Double(), nullable=True),
    Column("wall_time", Double(), nullable=False),
    Column("details", JSON(), nullable=False),
    Index(None, "deploy_id", "id"),
    sqlite_autoincrement=True,  # never reuse a seq
)

samples = Table(
    "samples",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("deploy_id", String(), ForeignKey("deploys.id", ondelete="CASCADE"), nullable=False),
    Column("track", String(), nullable=False),
    Column("start", Double(), nullable=False),
    Column("end", Double(), nullable=False),
    Column("payload", JSON(), nullable=False),  # codec.sample_to_dict
    UniqueConstraint("deploy_id", "track", "start", "end"),
    sqlite_autoincrement=True,
)

actions = Table(
    "actions",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("deploy_id", String(), ForeignKey("deploys.id", ondelete="CASCADE"), nullable=False),
    Column("key", String(), nullable=False),  # Command.key
    Column("kind", String(), nullable=False),
    Column("step", Integer(), nullable=True),
    Column("reason", Text(), nullable=False),
    Column("status", String(), nullable=False),
    Column("attempts", Integer(), nullable=False),
    Column("result", JSON(), nullable=False),
    Column("created_at", Double(), nullable=False),
    Column("updated_at", Double(), nullable=False),
    CheckConstraint("attempts >= 0", name="attempts_not_negative"),
    Index(None, "deploy_id", "status"),
    Index(None, "status"),  # start-up recovery looks for pending/running actions of every deploy
    sqlite_autoincrement=True,
)

# The notification outbox: one row per notice and notifier, written in the same transaction as the
# incident transition that caused it, sent afterwards by the dispatcher (guardrail.service.notify).
notifications = Table(
    "notifications",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),  # also the webhook's Idempotency-Key
    Column("notifier", String(), nullable=False),  # configured name (notifications.notifiers.<name>)
    Column("key", String(), nullable=False),  # notice.key: deliveries of one key go out in id order
    Column("action", String(), nullable=False),  # notice.action, for reading the outbox
    Column("severity", String(), nullable=False),
    Column("notice", JSON(), nullable=False),  # codec.notice_to_dict
    Column("status", String(), nullable=False),  # pending | sent | failed
    Column("attempts", Integer(), nullable=False),
    Column("next_attempt_at", Double(), nullable=False),
    Column("last_error", Text(), nullable=True),  # the notifier's detail: never a secret
    Column("created_at", Double(), nullable=False),
    Column("sent_at", Double(), nullable=True),
    CheckConstraint("attempts >= 0", name="attempts_not_negative"),
    Index(None, "status", "next_attempt_at"),
    Index(None, "notifier", "key", "status"),
    sqlite_autoincrement=True,
)

# One row per incident key: open from the first trigger to the resolve (dedup of pages).
incidents = Table(
    "incidents",
    metadata,
    Column("key", String(), primary_key=True),
    Column("state", String(), nullable=False),  # open | resolved
    Column("rule", String(), nullable=False),
    Column("deploy_id", String(), nullable=True),  # no foreign key: incidents outlive deploy records
    Column("service", String(), nullable=False),
    Column("environment", String(), nullable=False),
    Column("severity", String(), nullable=False),
    Column("notice", JSON(), nullable=False),  # the trigger: its resolve carries the same labels
    Column("notifiers", JSON(), nullable=False),  # where the trigger went: the resolve goes there too
    Column("opened_at", Double(), nullable=False),
    Column("resolved_at", Double(), nullable=True),
    Index(None, "state"),
    Index(None, "deploy_id"),
)

# Drafted documents (post-mortems, plans, checklists): every draft is a new version, never overwritten.
drafts = Table(
    "drafts",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("deploy_id", String(), ForeignKey("deploys.id", ondelete="CASCADE"), nullable=False),
    Column("kind", String(), nullable=False),
    Column("version", Integer(), nullable=False),
    Column("markdown", Text(), nullable=False),
    Column("source", String(), nullable=False),  # offline | llm:<model>
    Column("note", Text(), nullable=False),
    Column("trigger", String(), nullable=False),  # request | rollback | cli
    Column("created_at", Double(), nullable=False),
    UniqueConstraint("deploy_id", "kind", "version"),
    sqlite_autoincrement=True,
)

__all__ = ["actions", "deploys", "drafts", "events", "incidents", "metadata", "notifications", "samples"]
