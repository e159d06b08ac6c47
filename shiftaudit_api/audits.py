"""Bodies of /v1/audits: what to audit and how, and an audit's state as it runs."""

from __future__ import annotations

import enum
import uuid
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from shiftaudit.config import AuditConfig
from shiftaudit_api.policies import PolicyResult

# What `gpu_type` may be: also the name of a queue (`audits.gpu.<type>`).
GPU_TYPE_NAME = r"^[a-z0-9][a-z0-9_-]{0,31}$"


class AuditStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self not in OPEN_STATUSES


# An audit in one of these may still change; the others are final.
OPEN_STATUSES = (AuditStatus.QUEUED, AuditStatus.RUNNING)


class AuditRequest(BaseModel):
    """How to audit: the config, the policies to judge the result by, where to run it.

    Shared by a direct request (`AuditCreate`) and the registry hooks' defaults.
    """

    model_config = ConfigDict(extra="forbid")

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


class AuditCreate(AuditRequest):
    model_id: uuid.UUID
    probe_set_id: uuid.UUID


class AuditSummary(BaseModel):
    """An audit as lists show it: state, summary metrics and verdict, without its config."""

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
    forward_passes: int | None = Field(
        None, description="its cost as estimated when it was created (POST /v1/audits/estimate)"
    )
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


class AuditOut(AuditSummary):
    """One audit in full: its summary and the config it runs with."""

    config: AuditConfig


class AuditEstimate(BaseModel):
    """What an audit would cost, in forward passes of the model, and whether the team's
    limits allow it now (the numbers `POST /v1/audits` checks before queueing)."""

    probes: int
    input_size: tuple[int, int] | None = Field(
        description="(H, W) from the config or the model file; null when neither says"
    )
    evaluations_per_probe: int = Field(description="shifts (or sampled evaluations) per probe")
    sweep_forward_passes: int
    layer_forward_passes: int = Field(description="the layer profile's, an upper bound")
    forward_passes: int
    shards: int = Field(description="probe ranges that workers sweep separately")
    max_forward_passes_per_audit: int
    open_audits: int = Field(description="the team's queued and running audits now")
    max_open_audits_per_team: int
    allowed: bool
    reason: str | None = Field(description="why it would be refused; null when allowed")
