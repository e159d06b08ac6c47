"""The `probe_sets` table: one row per (team, archive content)."""

from __future__ import annotations

from sqlalchemy import JSON, Index, Integer, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from service.db import Base
from service.stored_files.tables import StoredFileMixin


class ProbeSetFile(StoredFileMixin, Base):
    __tablename__ = "probe_sets"
    __table_args__ = (
        UniqueConstraint("team_id", "sha256"),
        Index("ix_probe_sets_team_created", "team_id", "created_at", "id"),
    )

    image_count: Mapped[int] = mapped_column(Integer)
    labelled: Mapped[bool]
    # {label: count} with the labels as strings: JSON object keys are strings anyway.
    label_summary: Mapped[dict[str, int]] = mapped_column(JSON)
