"""Bodies of /v1/policies: named gates, and the verdict an audit carries once it finished."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from shiftaudit.comparison import Metric

_INVARIANCE = [Metric.CONSISTENCY, Metric.INVARIANT_FRACTION]


class Threshold(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    metric: Metric
    op: Literal[">=", "<="]
    value: float


class NoRegression(BaseModel):
    """No significant regression against a baseline audit of the same probes."""

    model_config = ConfigDict(extra="forbid")

    baseline: Literal["previous_version"] | uuid.UUID = Field(
        description="previous_version: the latest succeeded audit of an earlier model with "
        "the same name on the same probe set; or an audit id"
    )
    metrics: list[Metric] = Field(default_factory=lambda: list(_INVARIANCE), min_length=1)


class PolicyRules(BaseModel):
    model_config = ConfigDict(extra="forbid")

    thresholds: list[Threshold] = Field(default_factory=list, max_length=50)
    no_regression: NoRegression | None = None


class PolicyIn(PolicyRules):
    # Not starting with a dot: "." and ".." would be path segments in /v1/policies/{name}.
    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*$")


class PolicyOut(PolicyIn):
    id: uuid.UUID
    created_at: datetime


class PolicyVerdict(BaseModel):
    name: str
    status: Literal["passed", "failed"]
    reasons: list[str] = Field(description="one per failed rule")


class PolicyResult(BaseModel):
    status: Literal["passed", "failed"]
    policies: list[PolicyVerdict]
