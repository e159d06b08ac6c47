"""/v1/models: upload (streamed, hashed, sniffed, deduplicated), list, get, delete."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from service.classifiers.models import ModelFile
from service.classifiers.schemas import ModelOut, ModelUploaded, UploadFields
from service.deps import Reader, SessionDep, SettingsDep, Writer
from service.idempotency import IdempotencyKeyHeader
from service.pagination import Page, decode_cursor, page_of
from service.storage import ArtifactStorage, ArtifactTooLarge, StoredArtifact
from service.stored_files import (
    TeamFiles,
    bytes_in_use,
    parse_fields,
    register_once,
    upload_fingerprint,
)
from service.uploads import MultipartUpload
from shiftaudit.errors import ModelError
from shiftaudit.model_files import sniff_model_format

router = APIRouter(prefix="/v1/models", tags=["models"])
NOT_FOUND = "no model with this id in your team"


@router.post(
    "",
    status_code=201,
    response_model=ModelUploaded,
    responses={
        200: {"model": ModelUploaded, "description": "already uploaded"},
    },
    openapi_extra={
        "requestBody": {
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["file", "name"],
                        "properties": {
                            "file": {"type": "string", "format": "binary"},
                            "name": {"type": "string"},
                            "version": {"type": "string"},
                            "registry_ref": {"type": "string"},
                            "class_names": {"type": "string", "description": "JSON list"},
                        },
                    }
                }
            },
            "required": True,
        }
    },
)
async def upload_model(
    request: Request,
    response: Response,
    principal: Writer,
    session: SessionDep,
    settings: SettingsDep,
    idempotency_key: IdempotencyKeyHeader = None,
) -> ModelUploaded | JSONResponse:
    """Upload an ONNX, TorchScript or torch.export file; the API never loads or runs it."""
    limit = settings.max_model_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit + 1024 * 1024:
        raise HTTPException(413, f"the model is larger than the {limit}-byte limit")
    storage: ArtifactStorage = request.app.state.storage
    upload = MultipartUpload(request)
    try:
        artifact = await storage.put_async_stream(upload.file_chunks(), max_bytes=limit)
    except ArtifactTooLarge as error:
        raise HTTPException(413, f"the model is larger than the {limit}-byte limit") from error
    request_hash = upload_fingerprint(request, upload.fields, artifact.sha256)

    def register() -> ModelUploaded:
        return register_model(
            session,
            storage,
            principal.team_id,
            artifact,
            upload.fields,
            upload.filename or "",
            response,
        )

    return await run_in_threadpool(
        register_once,
        session,
        team_id=principal.team_id,
        key=idempotency_key,
        request_hash=request_hash,
        storage=storage,
        sha256=artifact.sha256,
        response=response,
        register=register,
    )


def register_model(
    session: Any,
    storage: ArtifactStorage,
    team_id: uuid.UUID,
    artifact: StoredArtifact,
    raw_fields: dict[str, str],
    filename: str,
    response: Response,
) -> ModelUploaded:
    """A model row for stored bytes (or the team's existing row for them); refused bytes
    are deleted unless something else holds them."""
    repository = TeamFiles(session, team_id, ModelFile)
    try:
        fields = parse_fields(raw_fields, UploadFields)
        with storage.open_local(artifact.sha256) as path:
            model_format = sniff_model_format(path)
    except (HTTPException, ModelError) as error:
        if not bytes_in_use(session, artifact.sha256):
            storage.delete(artifact.sha256)
        if isinstance(error, ModelError):
            # The engine names the stored object; the client knows its own file name.
            message = str(error).replace(artifact.sha256, filename or "the upload")
            raise HTTPException(422, f"file: {message}") from error
        raise
    row, added = repository.add_once(
        name=fields.name,
        version=fields.version,
        format=model_format.value,
        sha256=artifact.sha256,
        size_bytes=artifact.size,
        registry_ref=fields.registry_ref,
        class_names=fields.class_names,
    )
    if added:
        response.headers["Location"] = f"/v1/models/{row.id}"
    else:
        response.status_code = 200
    return ModelUploaded(**ModelOut.model_validate(row).model_dump(), deduplicated=not added)


@router.get("")
def list_models(
    principal: Reader,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: str | None = None,
    name: str | None = None,
    sha256: Annotated[str | None, Query(pattern="^[0-9a-fA-F]{64}$")] = None,
) -> Page[ModelOut]:
    """The team's models, newest first, one keyset page at a time."""
    after = decode_cursor(cursor) if cursor else None
    rows = TeamFiles(session, principal.team_id, ModelFile).page(
        limit=limit + 1, after=after, name=name, sha256=sha256
    )
    return page_of(rows, limit=limit, schema=ModelOut)


@router.get("/{model_id}")
def get_model(model_id: uuid.UUID, principal: Reader, session: SessionDep) -> ModelOut:
    row = TeamFiles(session, principal.team_id, ModelFile).get(model_id)
    if row is None:
        raise HTTPException(404, NOT_FOUND)
    return ModelOut.model_validate(row)


@router.delete("/{model_id}", status_code=204)
def delete_model(
    model_id: uuid.UUID, principal: Writer, session: SessionDep, request: Request
) -> None:
    """Delete a model; its stored bytes go too unless another team uploaded the same file."""
    TeamFiles(session, principal.team_id, ModelFile).delete(
        model_id, storage=request.app.state.storage, missing=NOT_FOUND
    )
