"""GET /v1/compare and GET /v1/trend: audits side by side, and a model's lineage."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query

from service.compare.service import compare_audits, model_trend, parse_audit_ids
from service.deps import Reader, SessionDep
from service.guard import GuardedRoute
from shiftaudit_api.comparisons import ComparisonOut, TrendPoint

router = APIRouter(prefix="/v1", tags=["compare"], route_class=GuardedRoute)


@router.get("/compare")
def compare(
    principal: Reader,
    session: SessionDep,
    audits: Annotated[
        str, Query(description="comma-separated audit ids; the first is the baseline")
    ],
) -> ComparisonOut:
    """Each audit against the first: deltas with 95% intervals (paired bootstrap over the same
    probes when the audits share probe set and sweep, else unpaired and why), an exact
    McNemar test on per-probe invariance, agreement per shift and layer errors side by side."""
    ids = parse_audit_ids(text=audits)
    return compare_audits(session=session, team_id=principal.team_id, ids=ids)


@router.get("/trend")
def trend(
    principal: Reader,
    session: SessionDep,
    model_name: Annotated[str, Query(min_length=1, max_length=200)],
    probe_set_id: uuid.UUID | None = None,
) -> list[TrendPoint]:
    """Model lineage: every version of `model_name` (oldest first) with its latest succeeded
    audit, on `probe_set_id` when given (to keep the numbers comparable)."""
    return model_trend(
        session=session, team_id=principal.team_id, model_name=model_name, probe_set_id=probe_set_id
    )
