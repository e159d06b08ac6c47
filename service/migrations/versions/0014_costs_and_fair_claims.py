"""What audits cost and where their shards may run: the input size a model file declares
(so a canvas sweep can be costed before it runs), an audit's forward passes, and each
shard's queue (so a worker can claim the fairest shard of its queue, not only its own).

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from service.routing import route_for

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("models", sa.Column("input_height", sa.Integer(), nullable=True))
    op.add_column("models", sa.Column("input_width", sa.Integer(), nullable=True))
    op.add_column("audits", sa.Column("forward_passes", sa.BigInteger(), nullable=True))
    op.add_column("audit_shards", sa.Column("route", sa.String(length=64), nullable=True))
    connection = op.get_bind()
    audits = sa.table(
        "audits", sa.column("id"), sa.column("config", sa.JSON), sa.column("gpu_type")
    )
    shards = sa.table("audit_shards", sa.column("audit_id"), sa.column("route"))
    for audit_id, config, gpu_type in connection.execute(
        sa.select(audits.c.id, audits.c.config, audits.c.gpu_type)
    ):
        route = route_for(config["runtime"]["device"], gpu_type)
        connection.execute(
            sa.update(shards).where(shards.c.audit_id == audit_id).values(route=route)
        )
    # A batch copy on SQLite: no table references audit_shards, so rebuilding it is safe.
    with op.batch_alter_table("audit_shards") as batch:
        batch.alter_column("route", existing_type=sa.String(length=64), nullable=False)
        batch.create_index("ix_audit_shards_route_status", ["route", "status"])


def downgrade() -> None:
    # ALTER TABLE ... DROP COLUMN, not a batch copy: rebuilding a table that others' rows
    # reference (models, audits) fails SQLite's foreign-key check once there is data.
    op.drop_index("ix_audit_shards_route_status", table_name="audit_shards")
    for table, column in (
        ("audit_shards", "route"),
        ("audits", "forward_passes"),
        ("models", "input_width"),
        ("models", "input_height"),
    ):
        op.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
