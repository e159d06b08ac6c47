"""Data access for stored-file tables, scoped to one team: the only tenant filter there."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Generic, TypeVar

from sqlalchemy import Select, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.db import Base
from service.errors import Conflict, NotFound
from service.pagination import newest_first
from service.stored_files.tables import StoredFileMixin

RowT = TypeVar("RowT", bound=StoredFileMixin)


class TeamFiles(Generic[RowT]):
    """The rows of one stored-file table that one team can see."""

    def __init__(self, session: Session, team_id: uuid.UUID, row_type: type[RowT]) -> None:
        self.session = session
        self.team_id = team_id
        self.row_type = row_type

    def _select(self) -> Select[RowT]:
        return select(self.row_type).where(self.row_type.team_id == self.team_id)

    def find(self, row_id: uuid.UUID) -> RowT | None:
        """The team's row with this id, or None."""
        return self.session.scalar(self._select().where(self.row_type.id == row_id))

    def get(self, row_id: uuid.UUID, *, noun: str) -> RowT:
        """The team's row with this id; NotFound naming the `noun` otherwise."""
        row = self.find(row_id)
        if row is None:
            raise NotFound(f"no {noun} with id {row_id} in your team")
        return row

    def by_sha256(self, sha256: str) -> RowT | None:
        return self.session.scalar(self._select().where(self.row_type.sha256 == sha256))

    def add_once(self, *, sha256: str, **fields: object) -> tuple[RowT, bool]:
        """The team's row for these bytes: added now (True), or the one it already had or
        that a concurrent upload of the same bytes added first (False). Call it before
        anything else is written in the transaction: losing the race rolls it back."""
        existing = self.by_sha256(sha256)
        if existing is not None:
            return existing, False
        row = self.row_type(**{"team_id": self.team_id, "sha256": sha256, **fields})
        self.session.add(row)
        try:
            self.session.flush()
        except IntegrityError:
            self.session.rollback()
            winner = self.by_sha256(sha256)
            if winner is None:
                raise
            return winner, False
        return row, True

    def page(
        self,
        *,
        limit: int,
        after: tuple[datetime, uuid.UUID] | None,
        name: str | None,
        sha256: str | None = None,
    ) -> list[RowT]:
        """Newest first; `after` is the (created_at, id) of the previous page's last row."""
        table = self.row_type
        query = self._select()
        if name is not None:
            query = query.where(table.name == name)
        if sha256 is not None:
            query = query.where(table.sha256 == sha256.lower())
        return list(self.session.scalars(newest_first(query, table, after=after, limit=limit)))

    def delete(self, row_id: uuid.UUID, *, noun: str) -> tuple[str, bool]:
        """Delete a row (flushed); its sha256, and whether no row points at those bytes now.

        Conflict while audits use it.
        """
        row = self.get(row_id, noun=noun)
        sha256, name = row.sha256, row.name
        self.session.delete(row)
        try:
            self.session.flush()
        except IntegrityError as error:
            self.session.rollback()
            raise Conflict(f"{noun} '{name}' is still used by audits") from error
        return sha256, not bytes_in_use(self.session, sha256)


def bytes_in_use(session: Session, sha256: str) -> bool:
    """Whether any row of any stored-file table, of any team, points at these bytes."""
    for mapper in Base.registry.mappers:
        table = mapper.class_
        if issubclass(table, StoredFileMixin):
            found = session.scalar(select(table.id).where(table.sha256 == sha256).limit(1))
            if found is not None:
                return True
    return False
