"""Each team's defaults for audits that registry hooks queue.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "hook_defaults",
        sa.Column("team_id", sa.Uuid(), nullable=False),
        sa.Column("probe_set_id", sa.Uuid(), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("policies", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["team_id"],
            ["teams.id"],
            name=op.f("fk_hook_defaults_team_id_teams"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["probe_set_id"],
            ["probe_sets.id"],
            name=op.f("fk_hook_defaults_probe_set_id_probe_sets"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("team_id", name=op.f("pk_hook_defaults")),
    )


def downgrade() -> None:
    op.drop_table("hook_defaults")
