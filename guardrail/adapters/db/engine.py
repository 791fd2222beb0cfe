"""Async engines for SQLite (aiosqlite) and PostgreSQL (asyncpg), and driver-error translation.

Shared by the store and the migrations, so both see the same pragmas, JSON codec and timeouts.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from typing import Any

from sqlalchemy import event, exc, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from guardrail.adapters.db import codec
from guardrail.config import DATABASE_URL_EXAMPLES, normalize_database_url
from guardrail.domain.errors import (
    ConfigError,
    ConflictError,
    GuardrailError,
    NotFoundError,
    StoreError,
    ValidationError,
)

# Execution option asking for a write transaction: SQLite then starts with BEGIN IMMEDIATE, taking
# the write lock up front, so two writers queue on the busy timeout instead of one failing with
# "database is locked" when it upgrades a read lock.
WRITE = "guardrail_write"


def parse_url(url: str | URL) -> URL:
    """Accept the async URLs, and plain ``sqlite://`` / ``postgresql://`` (given the async driver)."""
    text = url.render_as_string(hide_password=False) if isinstance(url, URL) else url
    normalized = normalize_database_url(text)  # the one mapping of spellings (guardrail.config)
    try:
        return make_url(normalized)
    except exc.ArgumentError:
        raise ConfigError(
            f"database URL is not a valid URL; expected {DATABASE_URL_EXAMPLES}", field="database_url"
        ) from None


def is_memory(u: URL) -> bool:
    return u.get_backend_name() == "sqlite" and u.database in (None, "", ":memory:")


def create_engine(
    url: str | URL,
    *,
    echo: bool = False,
    connect_timeout: float = 10.0,
    statement_timeout: float = 30.0,
    busy_timeout: float = 10.0,
) -> AsyncEngine:
    """An engine with guardrail's JSON codec. SQLite: WAL, foreign keys, a busy timeout and
    SQLAlchemy-controlled BEGIN (IMMEDIATE for writes). PostgreSQL: connect and command timeouts."""
    u = parse_url(url)
    common: dict[str, Any] = {"echo": echo, "json_serializer": codec.dumps, "json_deserializer": codec.loads}
    if u.get_backend_name() == "postgresql":
        return create_async_engine(
            u,
            pool_pre_ping=True,
            connect_args={"timeout": connect_timeout, "command_timeout": statement_timeout},
            **common,
        )
    engine = create_async_engine(u, connect_args={"timeout": busy_timeout}, **common)
    busy_ms = int(busy_timeout * 1000)

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # the driver must not emit BEGIN; we do (below)
        cur = dbapi_connection.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute(f"PRAGMA busy_timeout={busy_ms}")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(WRITE) else "BEGIN")

    return engine


async def execute_autocommit(url: str, *statements: str) -> None:
    """Run statements outside a transaction (``CREATE DATABASE`` and the like: tests, benchmarks)."""
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            for s in statements:
                await conn.execute(text(s))
    finally:
        await engine.dispose()


# --- error translation -----------------------------------------------------------------------------

# PostgreSQL SQLSTATE and SQLite extended result codes of the integrity errors we tell apart.
_PG_UNIQUE, _PG_FK, _PG_CHECK, _PG_NOT_NULL = "23505", "23503", "23514", "23502"
_SQLITE_UNIQUE = {
    getattr(sqlite3, "SQLITE_CONSTRAINT_UNIQUE", 2067),
    getattr(sqlite3, "SQLITE_CONSTRAINT_PRIMARYKEY", 1555),
}
_SQLITE_FK = {getattr(sqlite3, "SQLITE_CONSTRAINT_FOREIGNKEY", 787)}
_SQLITE_INVALID = {
    getattr(sqlite3, "SQLITE_CONSTRAINT_CHECK", 275),
    getattr(sqlite3, "SQLITE_CONSTRAINT_NOTNULL", 1299),
}


def _reason(e: BaseException) -> str:
    """The driver's own message, first line only. Never ``str()`` of a SQLAlchemy error: that
    includes the statement's parameters, and those may hold an adapter's secrets."""
    orig = getattr(e, "orig", None) or e
    text = str(orig).strip().splitlines()[0] if str(orig).strip() else type(orig).__name__
    if text.startswith("<class '"):  # SQLAlchemy's asyncpg adapter prefixes the asyncpg class
        text = text.split(": ", 1)[-1]
    return text[:300]


def _integrity_kind(e: exc.IntegrityError) -> str:
    orig = e.orig
    sqlstate = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    code = getattr(orig, "sqlite_errorcode", None)
    if sqlstate == _PG_UNIQUE or code in _SQLITE_UNIQUE:
        return "unique"
    if sqlstate == _PG_FK or code in _SQLITE_FK:
        return "missing"
    if sqlstate in (_PG_CHECK, _PG_NOT_NULL) or code in _SQLITE_INVALID:
        return "invalid"
    return "other"


@contextlib.contextmanager
def translate_errors(what: str, *, missing: str | None = None) -> Iterator[None]:
    """Turn driver and SQLAlchemy errors raised inside the block into ``guardrail.domain.errors``.

    ``what`` names the operation ("saving deploy d-1"); ``missing`` is the message for a foreign
    key pointing nowhere (e.g. "deploy d-1 not found")."""
    try:
        yield
    except GuardrailError:
        raise
    except exc.IntegrityError as e:
        kind = _integrity_kind(e)
        if kind == "unique":
            raise ConflictError(f"{what}: already recorded ({_reason(e)})") from None
        if kind == "missing":
            raise NotFoundError(missing or f"{what}: a referenced record does not exist") from None
        if kind == "invalid":
            raise ValidationError(f"{what}: the database refused a value ({_reason(e)})") from None
        raise StoreError(f"{what}: {_reason(e)}") from None
    except exc.DataError as e:
        raise ValidationError(f"{what}: the database refused a value ({_reason(e)})") from None
    except exc.DBAPIError as e:
        raise StoreError(f"{what}: database error ({_reason(e)})") from None
    except exc.StatementError as e:  # a value the driver or the JSON codec could not encode
        raise ValidationError(f"{what}: a value cannot be stored ({_reason(e)})") from None
    except exc.SQLAlchemyError as e:
        raise StoreError(f"{what}: {type(e).__name__} ({_reason(e)})") from None
    except (OSError, TimeoutError) as e:  # connect refused / timed out before any DBAPI error
        raise StoreError(f"{what}: database unreachable ({_reason(e)})") from None


__all__ = ["WRITE", "StoreError", "create_engine", "execute_autocommit", "is_memory", "parse_url", "translate_errors"]
