"""Alembic environment for guardrail. Works with async engines.

``guardrail.adapters.db.migrate`` passes an open connection in ``config.attributes["connection"]``
(run through ``AsyncConnection.run_sync``); otherwise this file opens its own async engine from the
``sqlalchemy.url`` option. No alembic.ini is needed: the Config is built in code.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection

from guardrail.adapters.db.engine import WRITE, create_engine
from guardrail.adapters.db.tables import metadata

try:
    config = context.config
except AttributeError:  # imported outside Alembic (e.g. by a module walker): nothing to run
    config = None


def _configure(**kw: object) -> None:
    context.configure(target_metadata=metadata, compare_type=True, **kw)


def run_offline() -> None:
    """Emit SQL to stdout (``alembic upgrade --sql``) instead of running it."""
    url = config.get_main_option("sqlalchemy.url")
    _configure(url=url, literal_binds=True, dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


def run_on(connection: Connection) -> None:
    _configure(connection=connection, render_as_batch=connection.dialect.name == "sqlite")
    with context.begin_transaction():
        context.run_migrations()


async def _run_async() -> None:
    engine = create_engine(config.get_main_option("sqlalchemy.url") or "")
    try:
        async with engine.execution_options(**{WRITE: True}).begin() as conn:
            await conn.run_sync(run_on)
    finally:
        await engine.dispose()


if config is None:
    pass
elif context.is_offline_mode():
    run_offline()
elif (connection := config.attributes.get("connection")) is None:
    asyncio.run(_run_async())
else:
    run_on(connection)
