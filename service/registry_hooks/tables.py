"""`hook_defaults`: what a team's registry hooks audit new model versions with; the MLflow
hook's connection and the deliveries it has turned into audits."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from service.db import Base, RecordMixin, UTCDateTime, utcnow


class TeamHookDefaults(Base):
    """A team's registry-hook defaults (one row per team)."""

    __tablename__ = "hook_defaults"

    team_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("teams.id", ondelete="CASCADE"), primary_key=True
    )
    probe_set_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("probe_sets.id", ondelete="RESTRICT")
    )
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    policies: Mapped[list[str]] = mapped_column(JSON)
    gpu_type: Mapped[str | None] = mapped_column(String(32), default=None)


class MlflowConnection(Base):
    """A team's MLflow tracking server: where model versions are fetched from, which
    webhook events start an audit, and the salt its webhook secret is derived from."""

    __tablename__ = "mlflow_connections"

    team_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("teams.id", ondelete="CASCADE"), primary_key=True
    )
    tracking_uri: Mapped[str] = mapped_column(String(2000))
    events: Mapped[list[str]] = mapped_column(JSON)
    # Kept in clear: it is sent to the tracking server with every fetch, so it cannot be
    # hashed. Never returned by the API.
    tracking_token: Mapped[str | None] = mapped_column(Text, default=None)
    # The webhook secret is HMAC(secret_key, team and salt), so only the salt is stored.
    secret_salt: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class MlflowDelivery(RecordMixin, Base):
    """A webhook delivery that queued an audit, written in the audit's transaction: the
    unique (team, delivery id) turns MLflow's retries and replays into the first answer."""

    __tablename__ = "mlflow_deliveries"
    __table_args__ = (UniqueConstraint("team_id", "delivery_id"),)

    team_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"))
    delivery_id: Mapped[str] = mapped_column(String(100))
    event: Mapped[str] = mapped_column(String(100))
    audit_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("audits.id", ondelete="CASCADE"))
