"""Drafted documents, and deploy leases for several replicas.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "drafts",
        sa.Column("id", Id, autoincrement=True, nullable=False),
        sa.Column("deploy_id", sa.String(), nullable=False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("markdown", sa.Text(), nullable=False),
        sa.Column("source", sa.String(), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("trigger", sa.String(), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.ForeignKeyConstraint(
            ["deploy_id"], ["deploys.id"], name=op.f("fk_drafts_deploy_id_deploys"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_drafts")),
        sa.UniqueConstraint("deploy_id", "kind", "version", name=op.f("uq_drafts_deploy_id_kind_version")),
        sqlite_autoincrement=True,
    )
    with op.batch_alter_table("deploys") as batch:
        batch.add_column(sa.Column("lease_owner", sa.String(), nullable=True))
        batch.add_column(sa.Column("lease_until", sa.Double(), nullable=True))
        batch.add_column(sa.Column("last_owner", sa.String(), nullable=True))
        batch.add_column(sa.Column("last_data_at", sa.Double(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("deploys") as batch:
        batch.drop_column("last_data_at")
        batch.drop_column("last_owner")
        batch.drop_column("lease_until")
        batch.drop_column("lease_owner")
    op.drop_table("drafts")
