"""The columns every stored-file table has (`models`, `probe_sets`)."""

from __future__ import annotations

import uuid

from sqlalchemy import JSON, BigInteger, ForeignKey, String
from sqlalchemy.orm import Mapped, declared_attr, mapped_column

from service.db import RecordMixin


class StoredFileMixin(RecordMixin):
    """Columns of every table whose rows are uploads kept in the artifact storage."""

    @declared_attr
    def team_id(cls) -> Mapped[uuid.UUID]:
        return mapped_column(ForeignKey("teams.id", ondelete="CASCADE"))

    name: Mapped[str] = mapped_column(String(200))
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    class_names: Mapped[list[str] | None] = mapped_column(JSON, default=None)
