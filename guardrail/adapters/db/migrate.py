"""Run the Alembic migrations programmatically: no alembic.ini at runtime.

``guardrail db upgrade`` and the service's start-up call :func:`upgrade`. Upgrading is idempotent
and serialised: PostgreSQL takes a transaction-level advisory lock and SQLite a write lock, so two
processes starting at once do not both try to create the tables.
"""

from __future__ import annotations

import asyncio
import functools
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import text
from sqlalchemy.engine import URL, Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from guardrail.adapters.db.engine import (
    WRITE,
    StoreError,
    create_engine,
    is_memory,
    parse_url,
    translate_errors,
)

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
_SQLITE_LOCKED_ATTEMPTS = 5
_LOCK_ID = 0x6775617264  # "guard": pg_advisory_xact_lock key shared by every guardrail process


def alembic_config(url: str | URL | None = None) -> Config:
    """An Alembic Config pointing at the packaged migrations, e.g. for
    ``alembic.command.revision(alembic_config(url), autogenerate=True, message=...)``."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS).replace("%", "%%"))
    if url is not None:
        cfg.set_main_option(
            "sqlalchemy.url", parse_url(url).render_as_string(hide_password=False).replace("%", "%%")
        )
    return cfg


@functools.cache
def head_revision() -> str:
    """The newest revision this version of guardrail knows (the packaged scripts do not change)."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, "no migrations packaged"
    return head


def _upgrade_sync(conn: Connection, revision: str) -> list[str]:
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _LOCK_ID})
    before = _current_sync(conn)
    cfg = alembic_config()
    cfg.attributes["connection"] = conn
    try:
        command.upgrade(cfg, revision)
    except CommandError as e:  # e.g. the database is at a revision this version does not know
        raise StoreError(
            f"cannot migrate the database to {revision}: {e}; is it newer than this guardrail?"
        ) from None
    after = _current_sync(conn)
    if after is None or after == before:
        return []
    script = ScriptDirectory.from_config(cfg)
    return [r.revision for r in reversed(list(script.iterate_revisions(after, before or "base")))]


async def upgrade_engine(engine: AsyncEngine, revision: str = "head") -> list[str]:
    """Migrate through an existing engine (lets an in-memory SQLite store migrate itself).
    Returns the revisions applied, oldest first (empty: it was already there)."""
    with translate_errors("migrating the database"):
        async with engine.execution_options(**{WRITE: True}).begin() as conn:
            return await conn.run_sync(_upgrade_sync, revision)


async def upgrade(url: str, revision: str = "head") -> list[str]:
    """Bring the database at ``url`` to ``revision`` (default: the newest). Safe to run again.
    Returns the revisions applied, oldest first (empty: it was already there)."""
    engine = create_engine(url)
    try:
        attempt = 1
        while True:
            try:
                return await upgrade_engine(engine, revision)
            except StoreError as e:
                # several processes upgrading one new SQLite file at once (the service and `guardrail
                # db upgrade`) can meet SQLite's "database is locked" instead of queueing; each attempt
                # is one transaction that was rolled back, so the next one starts clean
                locked = engine.dialect.name == "sqlite" and "locked" in str(e)
                if not locked or attempt == _SQLITE_LOCKED_ATTEMPTS:
                    raise
            await asyncio.sleep(0.2 * attempt)
            attempt += 1
    finally:
        await engine.dispose()


def _current_sync(conn: Connection) -> str | None:
    return MigrationContext.configure(conn).get_current_revision()


async def current_revision_engine(engine: AsyncEngine) -> str | None:
    with translate_errors("reading the schema revision"):
        async with engine.connect() as conn:
            return await conn.run_sync(_current_sync)


async def current_revision(url: str) -> str | None:
    """The revision the database is at; None for an empty (never migrated) database."""
    engine = create_engine(url)
    try:
        return await current_revision_engine(engine)
    finally:
        await engine.dispose()


async def database_exists(url: str) -> bool:
    """Whether ``url`` holds a guardrail database (migrated at least once). Never creates one: a
    SQLite file that does not exist is not opened (opening would create it)."""
    u = parse_url(url)
    if is_memory(u):
        return False
    if u.get_backend_name() == "sqlite" and not Path(u.database or "").is_file():
        return False
    return await current_revision(url) is not None


__all__ = [
    "alembic_config",
    "current_revision",
    "database_exists",
    "head_revision",
    "upgrade",
    "upgrade_engine",
]
