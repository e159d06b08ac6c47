"""Audit shards: the unit of work a worker claims, with its heartbeat and its statistics.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from service.db import UTCDateTime

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

status = sa.Enum("queued", "running", "succeeded", "failed", "cancelled", name="shard_status")


def upgrade() -> None:
    op.create_table(
        "audit_shards",
        sa.Column("audit_id", sa.Uuid(), nullable=False),
        sa.Column("shard", sa.Integer(), nullable=False),
        sa.Column("probe_start", sa.Integer(), nullable=False),
        sa.Column("probe_stop", sa.Integer(), nullable=False),
        sa.Column("status", status, nullable=False),
        sa.Column("progress", sa.Float(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("worker", sa.String(200), nullable=True),
        sa.Column("queued_at", UTCDateTime(), nullable=False),
        sa.Column("started_at", UTCDateTime(), nullable=True),
        sa.Column("heartbeat_at", UTCDateTime(), nullable=True),
        sa.Column("finished_at", UTCDateTime(), nullable=True),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.ForeignKeyConstraint(
            ["audit_id"],
            ["audits.id"],
            name=op.f("fk_audit_shards_audit_id_audits"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("audit_id", "shard", name=op.f("pk_audit_shards")),
    )
    op.create_index("ix_audit_shards_status_heartbeat", "audit_shards", ["status", "heartbeat_at"])
    # Unfinished audits from before shards existed become one shard over every probe.
    op.execute(
        "INSERT INTO audit_shards (audit_id, shard, probe_start, probe_stop, status, progress,"
        " attempts, queued_at)"
        " SELECT audits.id, 0, 0, probe_sets.image_count, 'queued', 0, 0, audits.created_at"
        " FROM audits JOIN probe_sets ON probe_sets.id = audits.probe_set_id"
        " WHERE audits.status IN ('queued', 'running')"
    )


def downgrade() -> None:
    op.drop_index("ix_audit_shards_status_heartbeat", table_name="audit_shards")
    op.drop_table("audit_shards")
    status.drop(op.get_bind(), checkfirst=True)
