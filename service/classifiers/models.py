"""The `models` table: one row per (team, file content)."""

from __future__ import annotations

import uuid

from sqlalchemy import JSON, BigInteger, ForeignKey, Index, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from service.db import Base, RecordMixin


class ModelFile(RecordMixin, Base):
    __tablename__ = "models"
    __table_args__ = (
        UniqueConstraint("team_id", "sha256"),
        Index("ix_models_team_created", "team_id", "created_at", "id"),
    )

    team_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    version: Mapped[str] = mapped_column(String(100))
    format: Mapped[str] = mapped_column(String(20))
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    registry_ref: Mapped[str | None] = mapped_column(String(500), default=None)
    class_names: Mapped[list[str] | None] = mapped_column(JSON, default=None)
