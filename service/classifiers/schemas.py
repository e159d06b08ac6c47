"""Request and response bodies for /v1/models."""

from __future__ import annotations

from pydantic import Field

from service.stored_files import StoredFileFields, StoredFileOut


class ModelOut(StoredFileOut):
    version: str
    format: str = Field(description="onnx, torchscript or torch_export, sniffed from content")
    registry_ref: str | None


class ModelUploaded(ModelOut):
    deduplicated: bool = Field(
        description="True when this team had already uploaded the same bytes: that model is "
        "returned and nothing new is stored."
    )


class UploadFields(StoredFileFields):
    """The text parts of a model upload."""

    version: str = Field("1", min_length=1, max_length=100)
    registry_ref: str | None = Field(None, max_length=500)
