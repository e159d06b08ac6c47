"""What uploaded models and probe sets share: team-scoped rows pointing at stored bytes.

Each row is one (team, content) pair; the bytes live once in the content-addressed storage,
whoever uploaded them, so bytes may only be deleted when no row of any kind points at them.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any, Generic, TypeVar

from fastapi import HTTPException, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import JSON, BigInteger, ForeignKey, Select, String, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, declared_attr, mapped_column

from service.db import Base, RecordMixin
from service.idempotency import Idempotency, canonical_hash
from service.pagination import newest_first
from service.storage import ArtifactStorage


class StoredFileMixin(RecordMixin):
    """Columns of every table whose rows are uploads kept in the artifact storage."""

    @declared_attr
    def team_id(cls) -> Mapped[uuid.UUID]:
        return mapped_column(ForeignKey("teams.id", ondelete="CASCADE"))

    name: Mapped[str] = mapped_column(String(200))
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    class_names: Mapped[list[str] | None] = mapped_column(JSON, default=None)


class StoredFileOut(BaseModel):
    """Fields every uploaded file reports."""

    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    sha256: str = Field(description="sha256 of the uploaded bytes")
    size_bytes: int
    class_names: list[str] | None
    created_at: datetime


class StoredFileFields(BaseModel):
    """Text parts every upload takes; the limits are the columns' (StoredFileMixin)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    class_names: list[str] | None = Field(None, max_length=100_000)


RowT = TypeVar("RowT", bound=StoredFileMixin)
SchemaT = TypeVar("SchemaT", bound=BaseModel)


class TeamFiles(Generic[RowT]):
    """The rows of one stored-file table that one team can see: the only tenant filter."""

    def __init__(self, session: Session, team_id: uuid.UUID, row_type: type[RowT]) -> None:
        self.session = session
        self.team_id = team_id
        self.row_type = row_type

    def _select(self) -> Select[RowT]:
        return select(self.row_type).where(self.row_type.team_id == self.team_id)

    def get(self, row_id: uuid.UUID) -> RowT | None:
        return self.session.scalar(self._select().where(self.row_type.id == row_id))

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

    def delete(self, row_id: uuid.UUID, *, storage: ArtifactStorage, missing: str) -> None:
        """Delete a row, then its bytes once committed, unless another row points at them."""
        row = self.get(row_id)
        if row is None:
            raise HTTPException(404, missing)
        sha256, name = row.sha256, row.name
        self.session.delete(row)
        try:
            self.session.flush()
        except IntegrityError as error:
            self.session.rollback()
            raise HTTPException(409, f"'{name}' is still used by audits") from error
        orphaned = not bytes_in_use(self.session, sha256)
        self.session.commit()  # the row is gone for good before its bytes are
        if orphaned:
            storage.delete(sha256)


def bytes_in_use(session: Session, sha256: str) -> bool:
    """Whether any row of any stored-file table, of any team, points at these bytes."""
    for mapper in Base.registry.mappers:
        table = mapper.class_
        if issubclass(table, StoredFileMixin):
            found = session.scalar(select(table.id).where(table.sha256 == sha256).limit(1))
            if found is not None:
                return True
    return False


def parse_fields(raw: dict[str, str], schema: type[SchemaT]) -> SchemaT:
    """Text parts of an upload -> `schema`; `class_names` arrives as a JSON list."""
    values: dict[str, Any] = dict(raw)
    if "class_names" in values:
        try:
            values["class_names"] = json.loads(values["class_names"])
        except json.JSONDecodeError as error:
            raise HTTPException(422, "class_names: must be a JSON list of strings") from error
    try:
        return schema.model_validate(values)
    except ValidationError as error:
        detail = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        raise HTTPException(422, detail) from error


def upload_fingerprint(request: Request, fields: dict[str, str], sha256: str) -> str:
    """An upload's identity for Idempotency-Key: its path, query, text fields and bytes."""
    return canonical_hash(
        {
            "method": request.method,
            "path": request.url.path,
            "query": sorted(request.query_params.multi_items()),
            "fields": fields,
            "file_sha256": sha256,
        }
    )


def register_once(
    session: Session,
    *,
    team_id: uuid.UUID,
    key: str | None,
    request_hash: str,
    storage: ArtifactStorage,
    sha256: str,
    response: Response,
    register: Callable[[], SchemaT],
) -> SchemaT | JSONResponse:
    """Run an upload's `register` under its Idempotency-Key, if it has one.

    The fingerprint includes the uploaded bytes' sha256, so it can only be known after
    streaming: a replay or a refusal then deletes those bytes unless a row points at them.
    """
    guard = Idempotency(request_hash=request_hash, key=key)
    try:
        replayed = guard.replay(session, team_id)
    except HTTPException:
        if not bytes_in_use(session, sha256):
            storage.delete(sha256)
        raise
    if replayed is not None:
        return replayed
    result = register()
    try:
        guard.record(session, team_id, response.status_code or 201, result.model_dump(mode="json"))
    except IntegrityError:
        # A concurrent first request with the same key won: answer as it did.
        session.rollback()
        won = guard.replay(session, team_id)
        if won is None:
            raise
        return won
    return result
