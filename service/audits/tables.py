"""`audits` (state and summary columns), `audit_shards` (the units workers claim) and
`audit_reports` (the full report)."""

from __future__ import annotations

import itertools
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Enum, Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from service.db import Base, RecordMixin, UTCDateTime, utcnow
from shiftaudit_api.audits import AuditStatus


class Audit(RecordMixin, Base):
    __tablename__ = "audits"
    __table_args__ = (Index("ix_audits_team_created", "team_id", "created_at", "id"),)

    team_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"))
    # RESTRICT: a model or probe set cannot disappear under its audits.
    model_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("models.id", ondelete="RESTRICT"))
    probe_set_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("probe_sets.id", ondelete="RESTRICT")
    )
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    gpu_type: Mapped[str | None] = mapped_column(String(32), default=None)
    status: Mapped[AuditStatus] = mapped_column(
        Enum(AuditStatus, name="audit_status", values_callable=lambda e: [m.value for m in e]),
        default=AuditStatus.QUEUED,
    )
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    # Summary columns, so lists and dashboards never parse report blobs.
    consistency: Mapped[float | None] = mapped_column(Float, default=None)
    flip_rate: Mapped[float | None] = mapped_column(Float, default=None)
    accuracy: Mapped[float | None] = mapped_column(Float, default=None)
    worst_case_accuracy: Mapped[float | None] = mapped_column(Float, default=None)
    schema_version: Mapped[str | None] = mapped_column(String(10), default=None)
    # sha256 of the model bytes, probe-set bytes and canonical config: finds a succeeded audit
    # of an identical request to reuse. NULL for rows from before it existed (never reused).
    request_hash: Mapped[str | None] = mapped_column(String(64), default=None, index=True)
    # The policies as they were when the audit was submitted ([{name, rules}]), and the
    # verdict written with the report.
    policies: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON, default=None)
    policy_result: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    # The cost estimated when it was created (shiftaudit.cost); NULL for older rows.
    forward_passes: Mapped[int | None] = mapped_column(BigInteger, default=None)


class AuditReport(Base):
    __tablename__ = "audit_reports"

    audit_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("audits.id", ondelete="CASCADE"), primary_key=True
    )
    report: Mapped[dict[str, Any]] = mapped_column(JSON)


class AuditShard(Base):
    """Probes [probe_start, probe_stop) of an audit: what one worker claims and sweeps.

    An audit has one shard unless its probe set is larger than the shard size; the shard's
    `result` holds its sufficient statistics: merged into the report, and kept for
    comparing audits probe by probe.
    """

    __tablename__ = "audit_shards"
    __table_args__ = (
        Index("ix_audit_shards_status_heartbeat", "status", "heartbeat_at"),
        Index("ix_audit_shards_route_status", "route", "status"),
    )

    audit_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("audits.id", ondelete="CASCADE"), primary_key=True
    )
    shard: Mapped[int] = mapped_column(Integer, primary_key=True)
    probe_start: Mapped[int] = mapped_column(Integer)
    probe_stop: Mapped[int] = mapped_column(Integer)
    # The queue its jobs go to (service.routing): a worker of that queue may claim it.
    route: Mapped[str] = mapped_column(String(64))
    status: Mapped[AuditStatus] = mapped_column(
        Enum(AuditStatus, name="shard_status", values_callable=lambda e: [m.value for m in e]),
        default=AuditStatus.QUEUED,
    )
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str | None] = mapped_column(String(200), default=None)
    queued_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)


def shard_spans(probe_count: int, shard_probes: int) -> list[tuple[int, int]]:
    """Split probes into near-equal [start, stop) spans of at most `shard_probes` each."""
    count = max(1, -(-probe_count // shard_probes))
    edges = [round(i * probe_count / count) for i in range(count + 1)]
    return list(itertools.pairwise(edges))
