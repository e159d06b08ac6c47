"""Request and response bodies for /v1/audits."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from service.audits.models import AuditStatus
from service.policies.schemas import PolicyResult
from service.routing import GPU_TYPE_NAME
from shiftaudit.config import AuditConfig


class AuditCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model_id: uuid.UUID
    probe_set_id: uuid.UUID
    config: AuditConfig = Field(default_factory=AuditConfig)
    policies: list[str] = Field(
        default_factory=list,
        max_length=20,
        description="names of the team's policies to evaluate the finished audit against",
    )
    gpu_type: str | None = Field(
        None,
        pattern=GPU_TYPE_NAME,
        description="run only on workers for this GPU type (one of the deployment's "
        "SHIFTAUDIT_GPU_TYPES); needs runtime.device cuda or auto",
    )


class AuditOut(BaseModel):
    # Built from rows (`policy_result`) in the service, from JSON (`policy`) in the client.
    model_config = ConfigDict(from_attributes=True, validate_by_name=True)

    id: uuid.UUID
    model_id: uuid.UUID
    probe_set_id: uuid.UUID
    status: AuditStatus
    progress: float = Field(description="0-1, updated at most once a second while running")
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    consistency: float | None
    flip_rate: float | None
    accuracy: float | None
    worst_case_accuracy: float | None
    config: AuditConfig
    gpu_type: str | None = Field(None, description="the GPU type it was routed to, if any")
    policy: PolicyResult | None = Field(
        None,
        validation_alias="policy_result",
        description="verdict of the policies it was submitted with, once it succeeded",
    )
    reused: bool = Field(
        default=False,
        description="true when an earlier succeeded audit of the same request was returned",
    )
