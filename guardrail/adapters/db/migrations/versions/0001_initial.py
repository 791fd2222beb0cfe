"""Initial schema: deploys, events (the timeline), samples, actions (the intent log).

Revision ID: 0001
Revises:
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "deploys",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("service", sa.String(), nullable=False),
        sa.Column("environment", sa.String(), nullable=False),
        sa.Column("version", sa.String(), nullable=False),
        sa.Column("state", sa.String(), nullable=False),
        sa.Column("idempotency_key", sa.String(), nullable=True),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column("updated_at", sa.Double(), nullable=False),
        sa.Column("data_time", sa.Double(), nullable=False),
        sa.Column("marker", sa.JSON(), nullable=False),
        sa.Column("rollout", sa.JSON(), nullable=False),
        sa.Column("verdict", sa.JSON(none_as_null=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_deploys")),
        sa.UniqueConstraint("idempotency_key", name=op.f("uq_deploys_idempotency_key")),
    )
    op.create_index(
        op.f("ix_deploys_service_environment_created_at"),
        "deploys",
        ["service", "environment", "created_at"],
    )
    op.create_index(op.f("ix_deploys_state"), "deploys", ["state"])
    op.create_index(op.f("ix_deploys_created_at"), "deploys", ["created_at"])

    op.create_table(
        "events",
        sa.Column("id", Id, autoincrement=True, nullable=False),
        sa.Column("deploy_id", sa.String(), nullable=False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("data_time", sa.Double(), nullable=True),
        sa.Column("wall_time", sa.Double(), nullable=False),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["deploy_id"], ["deploys.id"], name=op.f("fk_events_deploy_id_deploys"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_events")),
        sqlite_autoincrement=True,
    )
    op.create_index(op.f("ix_events_deploy_id_id"), "events", ["deploy_id", "id"])

    op.create_table(
        "samples",
        sa.Column("id", Id, autoincrement=True, nullable=False),
        sa.Column("deploy_id", sa.String(), nullable=False),
        sa.Column("track", sa.String(), nullable=False),
        sa.Column("start", sa.Double(), nullable=False),
        sa.Column("end", sa.Double(), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["deploy_id"], ["deploys.id"], name=op.f("fk_samples_deploy_id_deploys"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_samples")),
        sa.UniqueConstraint(
            "deploy_id", "track", "start", "end", name=op.f("uq_samples_deploy_id_track_start_end")
        ),
        sqlite_autoincrement=True,
    )

    op.create_table(
        "actions",
        sa.Column("id", Id, autoincrement=True, nullable=False),
        sa.Column("deploy_id", sa.String(), nullable=False),
        sa.Column("key", sa.String(), nullable=False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("step", sa.Integer(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("result", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column("updated_at", sa.Double(), nullable=False),
        sa.CheckConstraint("attempts >= 0", name=op.f("ck_actions_attempts_not_negative")),
        sa.ForeignKeyConstraint(
            ["deploy_id"], ["deploys.id"], name=op.f("fk_actions_deploy_id_deploys"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_actions")),
        sqlite_autoincrement=True,
    )
    op.create_index(op.f("ix_actions_deploy_id_status"), "actions", ["deploy_id", "status"])
    op.create_index(op.f("ix_actions_status"), "actions", ["status"])


def downgrade() -> None:
    op.drop_table("actions")
    op.drop_table("samples")
    op.drop_table("events")
    op.drop_table("deploys")
