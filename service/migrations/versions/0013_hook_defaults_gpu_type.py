"""The GPU type that hook-queued audits ask for, as POST /v1/audits's gpu_type.

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("hook_defaults", sa.Column("gpu_type", sa.String(length=32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("hook_defaults") as batch:
        batch.drop_column("gpu_type")
