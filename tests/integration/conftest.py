"""Fixtures for tests against real servers on loopback. One section per kind of server."""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from guardrail.adapters.db.engine import create_engine
from guardrail.adapters.db.migrate import upgrade
from guardrail.adapters.db.store import SqlStore

# ===================================================================================================
# Databases: SQLite (a temp file, always) and PostgreSQL (when GUARDRAIL_TEST_DATABASE_URL is set)
# ===================================================================================================
#
# GUARDRAIL_TEST_DATABASE_URL names a database on a PostgreSQL server the tests may create databases
# on, e.g. postgresql+asyncpg://postgres@127.0.0.1:5432/test. The session creates one fresh database
# (guardrail_test_<random>), migrates it, empties its tables before each test and drops it at the
# end; tests of the migrations themselves get a second one, wiped before each (``empty_db_url``).
# Unset: the PostgreSQL cases skip, unless GUARDRAIL_REQUIRE_INTEGRATION=1, where they fail.

PG_URL_ENV = "GUARDRAIL_TEST_DATABASE_URL"
REQUIRE_ENV = "GUARDRAIL_REQUIRE_INTEGRATION"
DB_BACKENDS = ["sqlite", "postgresql"]
_TABLES = ("actions", "samples", "events", "deploys")  # children first


def _pg_server_url_or_skip() -> str:
    url = os.environ.get(PG_URL_ENV, "").strip()
    if url:
        return url
    why = (
        f"{PG_URL_ENV} is not set, so the PostgreSQL cases cannot run; set it to a database on a "
        f"server that allows CREATE DATABASE, e.g. {PG_URL_ENV}=postgresql+asyncpg://postgres@127.0.0.1:5432/test"
    )
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{REQUIRE_ENV}=1 but {why}", pytrace=False)
    pytest.skip(why)


async def _admin(server_url: str, *statements: str) -> None:
    engine = create_engine(server_url)
    try:
        async with engine.connect() as conn:
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            for s in statements:
                await conn.execute(text(s))
    finally:
        await engine.dispose()


@pytest.fixture(scope="session")
def pg_database_factory() -> Iterator[Callable[[], str]]:
    """Creates fresh, empty PostgreSQL databases (URLs returned); drops them all at session end."""
    server_url = _pg_server_url_or_skip()
    created: list[str] = []

    def create() -> str:
        name = f"guardrail_test_{uuid.uuid4().hex[:12]}"
        asyncio.run(_admin(server_url, f'CREATE DATABASE "{name}"'))
        created.append(name)
        return make_url(server_url).set(database=name).render_as_string(hide_password=False)

    yield create
    if created:
        asyncio.run(_admin(server_url, *(f'DROP DATABASE IF EXISTS "{n}" WITH (FORCE)' for n in created)))


@pytest.fixture(scope="session")
def pg_database_url(pg_database_factory: Callable[[], str]) -> str:
    """One migrated PostgreSQL database for the session (emptied before each test by ``store_url``)."""
    url = pg_database_factory()
    asyncio.run(upgrade(url))
    return url


@pytest.fixture(scope="session")
def pg_scratch_database_url(pg_database_factory: Callable[[], str]) -> str:
    """A second database for tests of the migrations, wiped to nothing before each of them (a new
    database per test would be slower: every DROP DATABASE forces a checkpoint)."""
    return pg_database_factory()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file, made once; each test gets a copy (faster than migrating each time)."""
    path = tmp_path_factory.mktemp("db-template") / "guardrail.db"
    asyncio.run(upgrade(f"sqlite+aiosqlite:///{path}"))
    assert not path.with_name(path.name + "-wal").exists()  # checkpointed on close: one file to copy
    return path


@pytest.fixture(params=DB_BACKENDS)
def db_backend(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """(backend name, URL of a migrated database). Sync on purpose: the session fixtures behind it
    run their own event loop."""
    if request.param == "sqlite":
        path = tmp_path_factory.mktemp("db") / "guardrail.db"
        shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
        return "sqlite", f"sqlite+aiosqlite:///{path}"
    return "postgresql", request.getfixturevalue("pg_database_url")


@pytest.fixture
async def store_url(db_backend: tuple[str, str]) -> str:
    """URL of a migrated database with no records in it (parametrized: sqlite, postgresql)."""
    backend, url = db_backend
    if backend == "postgresql":
        await _admin(url, *(f"DELETE FROM {t}" for t in _TABLES))  # much faster than TRUNCATE here
    return url


@pytest.fixture(params=DB_BACKENDS)
def empty_db_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """URL of a database that was never migrated (no tables at all)."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('db') / 'empty.db'}"
    url = request.getfixturevalue("pg_scratch_database_url")
    asyncio.run(_admin(url, "DROP SCHEMA public CASCADE", "CREATE SCHEMA public"))
    return url


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[SqlStore]:
    """An open ``SqlStore`` on ``store_url``; closed after the test."""
    s = await SqlStore.open(store_url)
    try:
        yield s
    finally:
        await s.close()


# ===================================================================================================
# (other servers: add a section below)
# ===================================================================================================
