"""Alembic migrations of the guardrail schema (run with ``guardrail.adapters.db.migrate.upgrade``)."""
