"""Data access for uploaded models; every query is scoped to one team here, nowhere else."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import Select, and_, or_, select
from sqlalchemy.orm import Session

from service.classifiers.models import ModelFile


class ModelRepository:
    """The models one team can see."""

    def __init__(self, session: Session, team_id: uuid.UUID) -> None:
        self.session = session
        self.team_id = team_id

    def _select(self) -> Select[ModelFile]:
        return select(ModelFile).where(ModelFile.team_id == self.team_id)

    def get(self, model_id: uuid.UUID) -> ModelFile | None:
        return self.session.scalar(self._select().where(ModelFile.id == model_id))

    def by_sha256(self, sha256: str) -> ModelFile | None:
        return self.session.scalar(self._select().where(ModelFile.sha256 == sha256))

    def add(self, **fields: object) -> ModelFile:
        row = ModelFile(team_id=self.team_id, **fields)
        self.session.add(row)
        self.session.flush()
        return row

    def delete(self, row: ModelFile) -> None:
        self.session.delete(row)
        self.session.flush()

    def page(
        self, *, limit: int, after: tuple[datetime, uuid.UUID] | None, name: str | None
    ) -> list[ModelFile]:
        """Newest first; `after` is the (created_at, id) of the previous page's last row."""
        query = self._select()
        if name is not None:
            query = query.where(ModelFile.name == name)
        if after is not None:
            created, row_id = after
            query = query.where(
                or_(
                    ModelFile.created_at < created,
                    and_(ModelFile.created_at == created, ModelFile.id < row_id),
                )
            )
        query = query.order_by(ModelFile.created_at.desc(), ModelFile.id.desc()).limit(limit)
        return list(self.session.scalars(query))


def sha256_in_use(session: Session, sha256: str) -> bool:
    """Whether any team still references this stored content (storage is shared)."""
    return session.scalar(select(ModelFile.id).where(ModelFile.sha256 == sha256)) is not None
