"""/v1/probe-sets: upload (streamed, hashed, validated, deduplicated), list, get, delete."""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from pathlib import Path

from fastapi import APIRouter, Depends, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from service.deps import SessionDep, SettingsDep, Writer
from service.errors import TooLarge
from service.guard import GuardedRoute
from service.idempotency import IdempotencyKeyHeader
from service.probe_sets.service import PROBE_SETS, as_archive, register_probe_set
from service.scratch import scratch_directory
from service.storage import ArtifactStorage, ArtifactTooLarge
from service.stored_files.endpoints import add_routes, finish_upload
from service.uploads import (
    MultipartUpload,
    multipart_body,
    refuse_declared_length,
    streams_own_body,
)
from shiftaudit_api.uploads import ProbeSetUploaded

router = APIRouter(prefix="/v1/probe-sets", tags=["probe sets"], route_class=GuardedRoute)


@router.post(
    "",
    status_code=201,
    # Multipart, parsed while it streams, with the upload limits (after the key is checked).
    dependencies=[Depends(streams_own_body)],
    response_model=ProbeSetUploaded,
    responses={
        200: {"model": ProbeSetUploaded, "description": "already uploaded"},
    },
    openapi_extra=multipart_body(
        {
            "file": {
                "type": "string",
                "format": "binary",
                "description": "One .zip or .tar(.gz) archive of PNG, JPEG or WebP images, "
                "or several (or one) image files as repeated 'file' parts: those are packed "
                "into a tar, sorted by name.",
            },
            "name": {"type": "string"},
            "class_names": {"type": "string", "description": "JSON list"},
        }
    ),
)
async def upload_probe_set(
    request: Request,
    response: Response,
    principal: Writer,
    session: SessionDep,
    settings: SettingsDep,
    idempotency_key: IdempotencyKeyHeader = None,
) -> ProbeSetUploaded | JSONResponse:
    """Upload a zip or tar(.gz) of images, labelled by labels.csv or class folders, or not.

    Every image is decoded once here, so a set that uploads is a set an audit can read.
    """
    limit = settings.max_probe_set_bytes
    too_large = f"the probe set is larger than the {limit}-byte limit"
    refuse_declared_length(request, limit=limit, message=too_large)
    storage: ArtifactStorage = request.app.state.storage
    upload = MultipartUpload(request, max_files=settings.max_probe_images)
    # One directory for everything this request unpacks (its parts, the packed tar, the
    # extraction), named after this process: a restart after a crash finds and removes it.
    with scratch_directory(settings.data_dir / "tmp", "request") as scratch:
        parts = await upload.save_files(scratch, max_bytes=limit)
        source = await run_in_threadpool(
            partial(as_archive, parts=parts, destination=scratch / "images.tar")
        )
        try:
            artifact = await run_in_threadpool(storage.put_stream, _read(source), max_bytes=limit)
        except ArtifactTooLarge as error:
            raise TooLarge(too_large) from error
        for _, part in parts:  # stored now: only the extraction needs room from here on
            part.unlink(missing_ok=True)
        source.unlink(missing_ok=True)

        def register() -> tuple[ProbeSetUploaded, bool]:
            return register_probe_set(
                session=session,
                storage=storage,
                settings=settings,
                team_id=principal.team_id,
                artifact=artifact,
                raw_fields=upload.fields,
                filename=upload.filename or "",
                checks=request.app.state.probe_checks,
                scratch=scratch,
            )

        return await finish_upload(
            request=request,
            response=response,
            session=session,
            kind=PROBE_SETS,
            team_id=principal.team_id,
            key=idempotency_key,
            upload=upload,
            artifact=artifact,
            register=register,
        )


def _read(path: Path) -> Iterator[bytes]:
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            yield block


add_routes(router, PROBE_SETS, tag_noun="probe set")
