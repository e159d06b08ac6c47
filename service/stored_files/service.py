"""Registering, listing, reading and deleting stored files: one implementation for models
and probe sets, which differ only in how their bytes are checked (`describe`)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from pydantic import ValidationError
from sqlalchemy.orm import Session

from service.errors import DomainError, Invalid
from service.pagination import decode_cursor, page_of
from service.storage import ArtifactStorage, StoredArtifact
from service.stored_files.repository import TeamFiles, bytes_in_use
from service.stored_files.tables import StoredFileMixin
from shiftaudit_api.common import Page
from shiftaudit_api.uploads import StoredFileFields, StoredFileOut

RowT = TypeVar("RowT", bound=StoredFileMixin)
OutT = TypeVar("OutT", bound=StoredFileOut)
FieldsT = TypeVar("FieldsT", bound=StoredFileFields)


@dataclass(frozen=True)
class StoredFileKind(Generic[RowT, OutT]):
    """One kind of stored file: its table, its API body and how the API names it."""

    noun: str  # "model", "probe set": used in every message
    path: str  # "/v1/models": where its rows live in the API
    row_type: type[RowT]
    out: type[OutT]


def parse_fields(*, raw: dict[str, str], schema: type[FieldsT]) -> FieldsT:
    """Text parts of an upload -> `schema`; `class_names` arrives as a JSON list."""
    values: dict[str, Any] = dict(raw)
    if "class_names" in values:
        try:
            values["class_names"] = json.loads(values["class_names"])
        except json.JSONDecodeError as error:
            raise Invalid("class_names: must be a JSON list of strings") from error
    try:
        return schema.model_validate(values)
    except ValidationError as error:
        detail = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        raise Invalid(detail) from error


def register(
    *,
    session: Session,
    storage: ArtifactStorage,
    kind: StoredFileKind[RowT, OutT],
    team_id: uuid.UUID,
    artifact: StoredArtifact,
    raw_fields: dict[str, str],
    fields_schema: type[StoredFileFields],
    describe: Callable[[Path, StoredFileFields], dict[str, object]],
) -> tuple[OutT, bool]:
    """The team's row for stored bytes: added (True) or the one it had (False).

    `describe` checks the bytes (at a local path, with the parsed text fields) and returns
    the kind's own columns; it runs only for bytes the team has not uploaded before. Refused
    bytes are deleted unless another row holds them.
    """
    files = TeamFiles(session, team_id, kind.row_type)
    try:
        fields = parse_fields(raw=raw_fields, schema=fields_schema)
        existing = files.by_sha256(artifact.sha256)
        if existing is not None:
            return kind.out.model_validate(existing), False
        with storage.open_local(artifact.sha256) as path:
            columns = describe(path, fields)
    except DomainError:
        discard_unless_used(session=session, storage=storage, sha256=artifact.sha256)
        raise
    row, added = files.add_once(
        sha256=artifact.sha256,
        size_bytes=artifact.size,
        **fields.model_dump(),
        **columns,
    )
    return kind.out.model_validate(row), added


def discard_unless_used(*, session: Session, storage: ArtifactStorage, sha256: str) -> None:
    """Delete stored bytes that no row of any team points at (a refused or replayed upload)."""
    if not bytes_in_use(session, sha256):
        storage.delete(sha256)


def list_page(
    *,
    session: Session,
    kind: StoredFileKind[RowT, OutT],
    team_id: uuid.UUID,
    limit: int,
    cursor: str | None,
    name: str | None,
    sha256: str | None,
) -> Page[OutT]:
    """One keyset page of the team's files of this kind, newest first."""
    after = decode_cursor(cursor) if cursor else None
    rows = TeamFiles(session, team_id, kind.row_type).page(
        limit=limit + 1, after=after, name=name, sha256=sha256
    )
    return page_of(rows, limit=limit, schema=kind.out)


def get_one(
    *, session: Session, kind: StoredFileKind[RowT, OutT], team_id: uuid.UUID, file_id: uuid.UUID
) -> OutT:
    """One of the team's files of this kind."""
    row = TeamFiles(session, team_id, kind.row_type).get(file_id, noun=kind.noun)
    return kind.out.model_validate(row)


def delete_one(
    *,
    session: Session,
    storage: ArtifactStorage,
    kind: StoredFileKind[RowT, OutT],
    team_id: uuid.UUID,
    file_id: uuid.UUID,
) -> None:
    """Delete a row, then its bytes once committed, unless another row points at them."""
    sha256, orphaned = TeamFiles(session, team_id, kind.row_type).delete(file_id, noun=kind.noun)
    session.commit()  # the row is gone for good before its bytes are
    if orphaned:
        storage.delete(sha256)
