"""Registering uploaded classifier files: the bytes are sniffed, never loaded or run here."""

from __future__ import annotations

import uuid
from pathlib import Path

from sqlalchemy.orm import Session

from service.errors import Invalid
from service.models.tables import ModelFile
from service.storage import ArtifactStorage, StoredArtifact
from service.stored_files import service as stored_files
from service.stored_files.service import StoredFileKind
from shiftaudit.errors import ModelError
from shiftaudit.model_files import declared_input_size, sniff_model_format
from shiftaudit_api.uploads import ModelFields, ModelOut, ModelUploaded, StoredFileFields

MODELS = StoredFileKind(noun="model", path="/v1/models", row_type=ModelFile, out=ModelOut)


def register_model(
    *,
    session: Session,
    storage: ArtifactStorage,
    team_id: uuid.UUID,
    artifact: StoredArtifact,
    raw_fields: dict[str, str],
    filename: str,
) -> tuple[ModelUploaded, bool]:
    """The team's model row for stored bytes, added (True) or existing (False)."""

    def describe(path: Path, fields: StoredFileFields) -> dict[str, object]:
        try:
            model_format = sniff_model_format(path)
            size = declared_input_size(path)
        except ModelError as error:
            # The engine names the stored object; the client knows its own file name.
            message = str(error).replace(artifact.sha256, filename or "the upload")
            raise Invalid(f"file: {message}") from error
        height, width = size if size is not None else (None, None)
        return {"format": model_format.value, "input_height": height, "input_width": width}

    out, added = stored_files.register(
        session=session,
        storage=storage,
        kind=MODELS,
        team_id=team_id,
        artifact=artifact,
        raw_fields=raw_fields,
        fields_schema=ModelFields,
        describe=describe,
    )
    return ModelUploaded(**out.model_dump(), deduplicated=not added), added
