"""Policies, and the policies each audit was submitted with and their verdict.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from service.db import UTCDateTime

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "policies",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("team_id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("rules", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["team_id"], ["teams.id"], name=op.f("fk_policies_team_id_teams"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_policies")),
        sa.UniqueConstraint("team_id", "name", name=op.f("uq_policies_team_id")),
    )
    op.add_column("audits", sa.Column("policies", sa.JSON(), nullable=True))
    op.add_column("audits", sa.Column("policy_result", sa.JSON(), nullable=True))


def downgrade() -> None:
    # Not batch mode: on SQLite that would recreate `audits` and cascade away its reports.
    op.drop_column("audits", "policy_result")
    op.drop_column("audits", "policies")
    op.drop_table("policies")
