"""Request and response bodies for /v1/probe-sets."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from service.stored_files import StoredFileOut


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


class UploadFields(BaseModel):
    """The text parts of a probe-set upload."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    class_names: list[str] | None = Field(None, max_length=100_000)
