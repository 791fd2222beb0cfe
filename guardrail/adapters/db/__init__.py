"""The database adapter: SQLAlchemy tables, Alembic migrations and ``SqlStore`` (the Store port).

Importing this package does no I/O. ``upgrade(url)`` migrates a database to the newest schema.
"""

from guardrail.adapters.db.engine import StoreError
from guardrail.adapters.db.migrate import current_revision, head_revision, upgrade
from guardrail.adapters.db.store import SqlStore

__all__ = ["SqlStore", "StoreError", "current_revision", "head_revision", "upgrade"]
