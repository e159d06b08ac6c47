"""HTTP for stored files: the list, get and delete routes of a kind, and idempotent uploads.

No `from __future__ import annotations` here: FastAPI reads the route functions' parameter
types at registration, and the path parameter's alias is made per kind, in a closure.
"""

import uuid
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Path, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.deps import Reader, SessionDep, Writer
from service.errors import DomainError
from service.idempotency import Idempotency, canonical_hash
from service.storage import ArtifactStorage, StoredArtifact
from service.stored_files import service
from service.stored_files.service import StoredFileKind
from service.uploads import MultipartUpload
from shiftaudit_api.common import Page
from shiftaudit_api.uploads import StoredFileOut

UploadedT = TypeVar("UploadedT", bound=StoredFileOut)


def add_routes(router: APIRouter, kind: StoredFileKind[Any, Any], *, tag_noun: str) -> None:
    """GET (a page), GET /{id} and DELETE /{id} for one kind, on its router."""
    out = kind.out
    id_name = f"{tag_noun.replace(' ', '_')}_id"
    file_path = "/{" + id_name + "}"
    FileId = Annotated[uuid.UUID, Path(alias=id_name)]

    def list_files(
        principal: Reader,
        session: SessionDep,
        limit: Annotated[int, Query(ge=1, le=200)] = 50,
        cursor: str | None = None,
        name: str | None = None,
        sha256: Annotated[str | None, Query(pattern="^[0-9a-fA-F]{64}$")] = None,
    ) -> Any:
        return service.list_page(
            session=session,
            kind=kind,
            team_id=principal.team_id,
            limit=limit,
            cursor=cursor,
            name=name,
            sha256=sha256,
        )

    def get_file(file_id: FileId, principal: Reader, session: SessionDep) -> Any:
        return service.get_one(
            session=session, kind=kind, team_id=principal.team_id, file_id=file_id
        )

    def delete_file(
        file_id: FileId, principal: Writer, session: SessionDep, request: Request
    ) -> None:
        service.delete_one(
            session=session,
            storage=request.app.state.storage,
            kind=kind,
            team_id=principal.team_id,
            file_id=file_id,
        )

    plural = f"{tag_noun}s"
    router.add_api_route(
        "",
        list_files,
        methods=["GET"],
        response_model=Page[out],  # type: ignore[valid-type]
        name=f"list_{plural.replace(' ', '_')}",
        summary=f"List {plural}",
        description=f"The team's {plural}, newest first, one keyset page at a time.",
    )
    router.add_api_route(
        file_path,
        get_file,
        methods=["GET"],
        response_model=out,
        name=f"get_{tag_noun.replace(' ', '_')}",
        summary=f"Get a {tag_noun}",
    )
    router.add_api_route(
        file_path,
        delete_file,
        methods=["DELETE"],
        status_code=204,
        name=f"delete_{tag_noun.replace(' ', '_')}",
        summary=f"Delete a {tag_noun}",
        description=f"Delete a {tag_noun}; its stored bytes go too unless another team "
        "uploaded the same file. 409 while audits use it.",
    )


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


async def finish_upload(
    *,
    request: Request,
    response: Response,
    session: Session,
    kind: StoredFileKind[Any, Any],
    team_id: uuid.UUID,
    key: str | None,
    upload: MultipartUpload,
    artifact: StoredArtifact,
    register: Callable[[], tuple[UploadedT, bool]],
) -> UploadedT | JSONResponse:
    """The answer to an upload whose bytes are stored: registered (in a thread: it reads
    them) under its Idempotency-Key."""
    return await run_in_threadpool(
        answer_upload,
        session,
        kind=kind,
        team_id=team_id,
        key=key,
        request_hash=upload_fingerprint(request, upload.fields, artifact.sha256),
        storage=request.app.state.storage,
        sha256=artifact.sha256,
        response=response,
        register=register,
    )


def answer_upload(
    session: Session,
    *,
    kind: StoredFileKind[Any, Any],
    team_id: uuid.UUID,
    key: str | None,
    request_hash: str,
    storage: ArtifactStorage,
    sha256: str,
    response: Response,
    register: Callable[[], tuple[UploadedT, bool]],
) -> UploadedT | JSONResponse:
    """Run an upload's `register` under its Idempotency-Key, if it has one; 201 with a
    Location for a new row, 200 for bytes the team already had.

    The fingerprint includes the uploaded bytes' sha256, so it can only be known after
    streaming: a replay or a refusal then deletes those bytes unless a row points at them.
    """
    guard = Idempotency(request_hash=request_hash, key=key)
    try:
        replayed = guard.replay(session, team_id)
    except DomainError:
        service.discard_unless_used(session=session, storage=storage, sha256=sha256)
        raise
    if replayed is not None:
        return replayed
    result, added = register()
    status = 201 if added else 200
    try:
        guard.record(session, team_id, status, result.model_dump(mode="json"))
    except IntegrityError:
        # A concurrent first request with the same key won: answer as it did.
        session.rollback()
        won = guard.replay(session, team_id)
        if won is None:
            raise
        return won
    response.status_code = status
    if added:
        response.headers["Location"] = f"{kind.path}/{result.id}"
    return result
