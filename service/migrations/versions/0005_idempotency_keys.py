"""Idempotency keys, and the request hash that lets identical audits be reused.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from service.db import UTCDateTime

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "idempotency_keys",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("team_id", sa.Uuid(), nullable=False),
        sa.Column("key", sa.String(200), nullable=False),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=False),
        sa.Column("response_body", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["team_id"],
            ["teams.id"],
            name=op.f("fk_idempotency_keys_team_id_teams"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_idempotency_keys")),
        sa.UniqueConstraint("team_id", "key", name=op.f("uq_idempotency_keys_team_id")),
    )
    # Nullable: audits from before this revision have no hash and are never reused.
    op.add_column("audits", sa.Column("request_hash", sa.String(64), nullable=True))
    op.create_index(op.f("ix_audits_request_hash"), "audits", ["request_hash"])


def downgrade() -> None:
    op.drop_index(op.f("ix_audits_request_hash"), table_name="audits")
    # Not batch mode: on SQLite that would recreate `audits` and cascade away its reports.
    op.drop_column("audits", "request_hash")
    op.drop_table("idempotency_keys")
