"""Bodies of /v1/compare and /v1/trend: audits side by side, and a model's lineage."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, Field

from shiftaudit.comparison import Delta, McNemar
from shiftaudit.report import LayerFindings
from shiftaudit_api.audits import AuditOut


class ShiftMapDifference(BaseModel):
    shifts: list[tuple[float, float]]
    baseline: list[float | None]
    candidate: list[float | None]
    difference: list[float | None] = Field(description="candidate - baseline agreement")


class LayerValues(BaseModel):
    """One layer's numbers in one audit (report 1.2; null where the report has none)."""

    on_grid_error: float | None
    off_grid_error: float | None
    aliasing_error: float | None
    local_aliasing: float | None
    field_fraction: float | None = Field(
        description="the receptive field as a share of the input, the smaller axis's"
    )
    role: str | None


class LayerDifference(BaseModel):
    name: str
    baseline_relative_error: float | None
    candidate_relative_error: float | None
    difference: float | None = Field(description="candidate - baseline relative error")
    baseline: LayerValues
    candidate: LayerValues


class FindingsPair(BaseModel):
    """The two layer profiles' diagnoses side by side (null for reports before 1.2)."""

    baseline: LayerFindings | None
    candidate: LayerFindings | None


class CandidateComparison(BaseModel):
    candidate: uuid.UUID
    pairing: str = Field(description="paired: same probes and sweep; else unpaired")
    reason: str | None = Field(description="why the audits could not be paired")
    deltas: list[Delta]
    mcnemar: McNemar | None = Field(description="exact McNemar test on per-probe invariance")
    shift_map: ShiftMapDifference | None = Field(
        description="agreement per shift side by side; null when the shift sets differ"
    )
    layers: list[LayerDifference] = Field(description="layers present in both, by name")
    findings: FindingsPair


class TrendPoint(BaseModel):
    model_id: uuid.UUID
    version: str
    model_created_at: datetime
    audit: AuditOut | None = Field(description="the version's latest succeeded audit, if any")


class ComparisonOut(BaseModel):
    baseline: uuid.UUID
    audits: list[AuditOut]
    comparisons: list[CandidateComparison] = Field(
        description="each audit after the first against the first"
    )
