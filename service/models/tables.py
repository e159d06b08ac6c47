"""The `models` table: one row per (team, classifier file content)."""

from __future__ import annotations

from sqlalchemy import Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from service.db import Base
from service.stored_files.tables import StoredFileMixin


class ModelFile(StoredFileMixin, Base):
    __tablename__ = "models"
    __table_args__ = (
        UniqueConstraint("team_id", "sha256"),
        Index("ix_models_team_created", "team_id", "created_at", "id"),
    )

    version: Mapped[str] = mapped_column(String(100))
    format: Mapped[str] = mapped_column(String(20))
    registry_ref: Mapped[str | None] = mapped_column(String(500), default=None)
    # (H, W) as the file declares it, read without loading it; None when it declares none.
    input_height: Mapped[int | None] = mapped_column(Integer, default=None)
    input_width: Mapped[int | None] = mapped_column(Integer, default=None)
