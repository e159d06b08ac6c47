"""/v1/models: upload (streamed, hashed, sniffed, deduplicated), list, get, delete."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse

from service.deps import SessionDep, SettingsDep, Writer
from service.errors import TooLarge
from service.guard import GuardedRoute
from service.idempotency import IdempotencyKeyHeader
from service.models.service import MODELS, register_model
from service.storage import ArtifactStorage, ArtifactTooLarge
from service.stored_files.endpoints import add_routes, finish_upload
from service.uploads import (
    MultipartUpload,
    multipart_body,
    refuse_declared_length,
    streams_own_body,
)
from shiftaudit_api.uploads import ModelUploaded

router = APIRouter(prefix="/v1/models", tags=["models"], route_class=GuardedRoute)


@router.post(
    "",
    status_code=201,
    # Multipart, parsed while it streams, with the upload limits (after the key is checked).
    dependencies=[Depends(streams_own_body)],
    response_model=ModelUploaded,
    responses={
        200: {"model": ModelUploaded, "description": "already uploaded"},
    },
    openapi_extra=multipart_body(
        {
            "file": {"type": "string", "format": "binary"},
            "name": {"type": "string"},
            "version": {"type": "string"},
            "registry_ref": {"type": "string"},
            "class_names": {"type": "string", "description": "JSON list"},
        }
    ),
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
    too_large = f"the model is larger than the {limit}-byte limit"
    refuse_declared_length(request, limit=limit, message=too_large)
    storage: ArtifactStorage = request.app.state.storage
    upload = MultipartUpload(request)
    try:
        artifact = await storage.put_async_stream(upload.file_chunks(), max_bytes=limit)
    except ArtifactTooLarge as error:
        raise TooLarge(too_large) from error

    def register() -> tuple[ModelUploaded, bool]:
        return register_model(
            session=session,
            storage=storage,
            team_id=principal.team_id,
            artifact=artifact,
            raw_fields=upload.fields,
            filename=upload.filename or "",
        )

    return await finish_upload(
        request=request,
        response=response,
        session=session,
        kind=MODELS,
        team_id=principal.team_id,
        key=idempotency_key,
        upload=upload,
        artifact=artifact,
        register=register,
    )


add_routes(router, MODELS, tag_noun="model")
