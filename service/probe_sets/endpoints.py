"""/v1/probe-sets: upload (streamed, hashed, validated, deduplicated), list, get, delete."""

from __future__ import annotations

import re
import tarfile
import tempfile
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from service.deps import Reader, SessionDep, SettingsDep, Writer
from service.idempotency import IdempotencyKeyHeader
from service.pagination import Page, decode_cursor, page_of
from service.probe_sets.models import ProbeSetFile
from service.probe_sets.schemas import ProbeSetOut, ProbeSetUploaded, UploadFields
from service.settings import Settings
from service.storage import ArtifactStorage, ArtifactTooLarge, StoredArtifact
from service.stored_files import (
    TeamFiles,
    bytes_in_use,
    parse_fields,
    register_once,
    upload_fingerprint,
)
from service.uploads import MultipartUpload
from shiftaudit.archives import pack_tar
from shiftaudit.errors import ProbeSetError
from shiftaudit.probe_sets import open_probe_set

router = APIRouter(prefix="/v1/probe-sets", tags=["probe sets"])
NOT_FOUND = "no probe set with this id in your team"


@dataclass(frozen=True)
class _Contents:
    """What validation learnt about an archive."""

    image_count: int
    labelled: bool
    label_summary: dict[str, int]


@router.post(
    "",
    status_code=201,
    response_model=ProbeSetUploaded,
    responses={
        200: {"model": ProbeSetUploaded, "description": "already uploaded"},
    },
    openapi_extra={
        "requestBody": {
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["file", "name"],
                        "properties": {
                            "file": {
                                "type": "string",
                                "format": "binary",
                                "description": "One .zip or .tar(.gz) archive of PNG, JPEG or "
                                "WebP images, or several (or one) image files as repeated "
                                "'file' parts: those are packed into a tar, sorted by name.",
                            },
                            "name": {"type": "string"},
                            "class_names": {"type": "string", "description": "JSON list"},
                        },
                    }
                }
            },
            "required": True,
        }
    },
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
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit + 1024 * 1024:
        raise HTTPException(413, f"the probe set is larger than the {limit}-byte limit")
    storage: ArtifactStorage = request.app.state.storage
    upload = MultipartUpload(request, max_files=settings.max_probe_images)
    scratch_root = settings.data_dir / "tmp"
    scratch_root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=scratch_root) as scratch:
        parts = await upload.save_files(Path(scratch), max_bytes=limit)
        source = await run_in_threadpool(_as_archive, parts, Path(scratch) / "images.tar")
        try:
            artifact = await run_in_threadpool(storage.put_stream, _read(source), max_bytes=limit)
        except ArtifactTooLarge as error:
            raise HTTPException(
                413, f"the probe set is larger than the {limit}-byte limit"
            ) from error
    request_hash = upload_fingerprint(request, upload.fields, artifact.sha256)

    def register() -> ProbeSetUploaded:
        return _register(
            session,
            storage,
            settings,
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


def _as_archive(parts: list[tuple[str, Path]], destination: Path) -> Path:
    """One archive part as is; loose images packed into a reproducible tar (sorted names,
    fixed metadata), so the same images always give the same bytes and sha256."""
    if len(parts) == 1 and _is_archive(parts[0][1]):
        return parts[0][1]
    names: dict[str, Path] = {}
    for filename, path in parts:
        name = PurePosixPath(filename.replace("\\", "/")).name
        if not name or name.startswith(".") or name in names:
            raise HTTPException(422, f"file: image part names must be distinct, got {filename!r}")
        names[name] = path
    return pack_tar(names, destination)


def _is_archive(path: Path) -> bool:
    with path.open("rb") as handle:
        magic = handle.read(4)
    return magic[:2] == b"\x1f\x8b" or zipfile.is_zipfile(path) or tarfile.is_tarfile(path)


def _read(path: Path) -> Iterator[bytes]:
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            yield block


def _register(
    session: Any,
    storage: ArtifactStorage,
    settings: Settings,
    team_id: uuid.UUID,
    artifact: StoredArtifact,
    raw_fields: dict[str, str],
    filename: str,
    response: Response,
) -> ProbeSetUploaded:
    repository = TeamFiles(session, team_id, ProbeSetFile)
    try:
        fields = parse_fields(raw_fields, UploadFields)
        existing = repository.by_sha256(artifact.sha256)
        if existing is not None:
            # Same bytes were validated when first uploaded; decoding them again is waste.
            response.status_code = 200
            out = ProbeSetOut.model_validate(existing)
            return ProbeSetUploaded(**out.model_dump(), deduplicated=True)
        contents = _validate(storage, settings, artifact.sha256, fields.class_names, filename)
    except HTTPException:
        if not bytes_in_use(session, artifact.sha256):
            storage.delete(artifact.sha256)
        raise
    row, added = repository.add_once(
        name=fields.name,
        sha256=artifact.sha256,
        size_bytes=artifact.size,
        image_count=contents.image_count,
        labelled=contents.labelled,
        label_summary=contents.label_summary,
        class_names=fields.class_names,
    )
    if added:
        response.headers["Location"] = f"/v1/probe-sets/{row.id}"
    else:
        response.status_code = 200
    out = ProbeSetOut.model_validate(row)
    return ProbeSetUploaded(**out.model_dump(), deduplicated=not added)


def _validate(
    storage: ArtifactStorage,
    settings: Settings,
    sha256: str,
    class_names: list[str] | None,
    filename: str,
) -> _Contents:
    """Open the stored archive with the engine's loader, decoding every image; 422 if refused."""
    limits = settings.probe_limits()
    tmp_dir = (settings.data_dir / "tmp").resolve()
    tmp_dir.mkdir(parents=True, exist_ok=True)
    with storage.open_local(sha256) as path:
        try:
            with open_probe_set(
                path, class_names=class_names, limits=limits, tmp_dir=tmp_dir, verify=True
            ) as probe_set:
                if probe_set.sha256 != sha256:
                    raise RuntimeError(f"stored object {sha256} changed while being read")
                return _Contents(
                    image_count=len(probe_set),
                    labelled=probe_set.has_labels,
                    label_summary={str(k): v for k, v in probe_set.label_summary().items()},
                )
        except ProbeSetError as error:
            detail = _public(str(error), path, tmp_dir, filename)
            raise HTTPException(422, f"file: {detail}") from error


def _public(message: str, archive: Path, tmp_dir: Path, filename: str) -> str:
    """The message without server paths: the client's file name for the stored archive, and
    member names for extracted files (image decoders quote the full path)."""
    message = message.replace(str(archive), filename or "the archive")
    message = re.sub(re.escape(str(tmp_dir)) + r"/[^/'\"\s]+/", "", message)
    return message.replace(str(tmp_dir), "the temporary directory")


@router.get("")
def list_probe_sets(
    principal: Reader,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: str | None = None,
    name: str | None = None,
    sha256: Annotated[str | None, Query(pattern="^[0-9a-fA-F]{64}$")] = None,
) -> Page[ProbeSetOut]:
    """The team's probe sets, newest first, one keyset page at a time."""
    after = decode_cursor(cursor) if cursor else None
    rows = TeamFiles(session, principal.team_id, ProbeSetFile).page(
        limit=limit + 1, after=after, name=name, sha256=sha256
    )
    return page_of(rows, limit=limit, schema=ProbeSetOut)


@router.get("/{probe_set_id}")
def get_probe_set(probe_set_id: uuid.UUID, principal: Reader, session: SessionDep) -> ProbeSetOut:
    row = TeamFiles(session, principal.team_id, ProbeSetFile).get(probe_set_id)
    if row is None:
        raise HTTPException(404, NOT_FOUND)
    return ProbeSetOut.model_validate(row)


@router.delete("/{probe_set_id}", status_code=204)
def delete_probe_set(
    probe_set_id: uuid.UUID, principal: Writer, session: SessionDep, request: Request
) -> None:
    """Delete a probe set; its stored bytes go too unless another team uploaded the same file."""
    TeamFiles(session, principal.team_id, ProbeSetFile).delete(
        probe_set_id, storage=request.app.state.storage, missing=NOT_FOUND
    )
