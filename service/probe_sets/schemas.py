"""Request and response bodies for /v1/probe-sets."""

from __future__ import annotations

from pydantic import Field

from service.stored_files import StoredFileFields, StoredFileOut


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


class UploadFields(StoredFileFields):
    """The text parts of a probe-set upload."""
