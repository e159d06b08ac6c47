"""Bodies of /v1/models and /v1/probe-sets: uploaded files, kept by content per team.

"Model" in this API means an uploaded classifier file (ONNX, TorchScript or torch.export).
"""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field


class StoredFileOut(BaseModel):
    """Fields every uploaded file reports."""

    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    sha256: str = Field(description="sha256 of the uploaded bytes")
    size_bytes: int
    class_names: list[str] | None
    created_at: datetime


class StoredFileFields(BaseModel):
    """Text parts every upload takes."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    class_names: list[str] | None = Field(None, max_length=100_000)


class ModelOut(StoredFileOut):
    version: str
    format: str = Field(description="onnx, torchscript or torch_export, sniffed from content")
    registry_ref: str | None


class ModelUploaded(ModelOut):
    deduplicated: bool = Field(
        description="True when this team had already uploaded the same bytes: that model is "
        "returned and nothing new is stored."
    )


class ModelFields(StoredFileFields):
    """The text parts of a model upload."""

    version: str = Field("1", min_length=1, max_length=100)
    registry_ref: str | None = Field(None, max_length=500)


class ProbeSetOut(StoredFileOut):
    image_count: int
    labelled: bool
    label_summary: dict[str, int] = Field(
        description="Class index (as a string) -> number of images; empty when unlabelled."
    )


class ProbeSetUploaded(ProbeSetOut):
    deduplicated: bool = Field(
        description="True when this team had already uploaded the same bytes: that probe set "
        "is returned and nothing new is stored."
    )


class ProbeSetFields(StoredFileFields):
    """The text parts of a probe-set upload."""
