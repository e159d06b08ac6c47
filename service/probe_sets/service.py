"""Registering uploaded probe sets: every image is decoded once here (no model is loaded),
so a set that uploads is a set an audit can read."""

from __future__ import annotations

import re
import tarfile
import threading
import uuid
import zipfile
from pathlib import Path, PurePosixPath

from sqlalchemy.orm import Session

from service.errors import Invalid
from service.probe_sets.tables import ProbeSetFile
from service.settings import Settings
from service.storage import ArtifactStorage, StoredArtifact
from service.stored_files import service as stored_files
from service.stored_files.service import StoredFileKind
from shiftaudit.archives import pack_tar
from shiftaudit.errors import ProbeSetError
from shiftaudit.probe_sets import open_probe_set
from shiftaudit_api.uploads import ProbeSetFields, ProbeSetOut, ProbeSetUploaded, StoredFileFields

PROBE_SETS = StoredFileKind(
    noun="probe set", path="/v1/probe-sets", row_type=ProbeSetFile, out=ProbeSetOut
)


def as_archive(*, parts: list[tuple[str, Path]], destination: Path) -> Path:
    """One archive part as is; loose images packed into a reproducible tar (sorted names,
    fixed metadata), so the same images always give the same bytes and sha256."""
    if len(parts) == 1 and _is_archive(parts[0][1]):
        return parts[0][1]
    names: dict[str, Path] = {}
    for filename, path in parts:
        name = PurePosixPath(filename.replace("\\", "/")).name
        if not name:
            raise Invalid(
                "file: every image part needs a file name (Content-Disposition: form-data; "
                f'name="file"; filename="..."), got {filename!r}'
            )
        if name.startswith("."):
            raise Invalid(
                f"file: {name!r} is a hidden file (its name starts with a dot); rename it"
            )
        if name in names:
            raise Invalid(f"file: image part names must be distinct: {name!r} is sent twice")
        names[name] = path
    return pack_tar(names, destination)


def _is_archive(path: Path) -> bool:
    with path.open("rb") as handle:
        magic = handle.read(4)
    return magic[:2] == b"\x1f\x8b" or zipfile.is_zipfile(path) or tarfile.is_tarfile(path)


def register_probe_set(
    *,
    session: Session,
    storage: ArtifactStorage,
    settings: Settings,
    team_id: uuid.UUID,
    artifact: StoredArtifact,
    raw_fields: dict[str, str],
    filename: str,
    checks: threading.Semaphore,
    scratch: Path,
) -> tuple[ProbeSetUploaded, bool]:
    """The team's probe-set row for stored bytes, added (True) or existing (False); the
    archive is unpacked and checked while holding one of `checks` (a bounded number at once:
    each may take up to the expansion limit of disk and a core), in the request's `scratch`."""

    def describe(path: Path, fields: StoredFileFields) -> dict[str, object]:
        with checks:
            return _validated(
                path, settings, artifact.sha256, fields.class_names, filename, scratch
            )

    out, added = stored_files.register(
        session=session,
        storage=storage,
        kind=PROBE_SETS,
        team_id=team_id,
        artifact=artifact,
        raw_fields=raw_fields,
        fields_schema=ProbeSetFields,
        describe=describe,
    )
    return ProbeSetUploaded(**out.model_dump(), deduplicated=not added), added


def _validated(
    path: Path,
    settings: Settings,
    sha256: str,
    class_names: list[str] | None,
    filename: str,
    scratch: Path,
) -> dict[str, object]:
    """Open the stored archive with the engine's loader (extracting under `scratch`),
    decoding every image; Invalid if refused. Returns the probe-set columns."""
    tmp_dir = scratch.resolve()
    try:
        with open_probe_set(
            path,
            class_names=class_names,
            limits=settings.probe_limits(),
            tmp_dir=tmp_dir,
            verify=True,
        ) as probe_set:
            if probe_set.sha256 != sha256:
                raise RuntimeError(f"stored object {sha256} changed while being read")
            return {
                "image_count": len(probe_set),
                "labelled": probe_set.has_labels,
                "label_summary": {str(k): v for k, v in probe_set.label_summary().items()},
            }
    except ProbeSetError as error:
        raise Invalid(f"file: {_public(str(error), path, tmp_dir, filename)}") from error


def _public(message: str, archive: Path, tmp_dir: Path, filename: str) -> str:
    """The message without server paths: the client's file name for the stored archive, and
    member names for extracted files (image decoders quote the full path)."""
    message = message.replace(str(archive), filename or "the archive")
    message = re.sub(re.escape(str(tmp_dir)) + r"/[^/'\"\s]+/", "", message)
    return message.replace(str(tmp_dir), "the temporary directory")
