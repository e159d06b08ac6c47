"""Request and response bodies for /v1/models."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from service.stored_files import StoredFileOut


class ModelOut(StoredFileOut):
    version: str
    format: str = Field(description="onnx, torchscript or torch_export, sniffed from content")
    registry_ref: str | None


class ModelUploaded(ModelOut):
    deduplicated: bool = Field(
        description="True when this team had already uploaded the same bytes: that model is "
        "returned and nothing new is stored."
    )


class UploadFields(BaseModel):
    """The text parts of a model upload."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    version: str = Field("1", min_length=1, max_length=100)
    registry_ref: str | None = Field(None, max_length=500)
    class_names: list[str] | None = Field(None, max_length=100_000)
