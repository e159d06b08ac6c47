"""Compare succeeded audits of one team against a baseline, from their stored statistics."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import HTTPException
from sqlalchemy import select
from sqlalchemy.orm import Session

from service.audits.endpoints import TeamAudits
from service.audits.models import Audit, AuditReport, AuditShard, AuditStatus
from service.audits.schemas import AuditOut
from service.compare.schemas import (
    CandidateComparison,
    ComparisonOut,
    LayerDifference,
    ShiftMapDifference,
)
from shiftaudit.compare import compare
from shiftaudit.config import AuditConfig
from shiftaudit.engine import probe_values
from shiftaudit.report import ShardResult

RESAMPLES = 2000


def compare_audits(*, session: Session, team_id: uuid.UUID, ids: list[uuid.UUID]) -> ComparisonOut:
    """The first audit is the baseline; every other one is compared with it."""
    audits = [TeamAudits(session, team_id).get(audit_id) for audit_id in ids]
    for audit in audits:
        if audit.status is not AuditStatus.SUCCEEDED:
            raise HTTPException(
                409, f"audit {audit.id} is {audit.status.value}; only succeeded audits compare"
            )
    reports = {a.id: session.get_one(AuditReport, a.id).report for a in audits}
    values = {a.id: _probe_values(session, a) for a in audits}
    baseline = audits[0]
    comparisons = []
    for candidate in audits[1:]:
        reason = _unpaired_reason(reports[baseline.id], reports[candidate.id])
        result = compare(
            values[baseline.id], values[candidate.id], unpaired_reason=reason, resamples=RESAMPLES
        )
        comparisons.append(
            CandidateComparison(
                candidate=candidate.id,
                pairing=result.pairing,
                reason=result.reason,
                deltas=result.deltas,
                mcnemar=result.mcnemar,
                shift_map=_shift_maps(reports[baseline.id], reports[candidate.id]),
                layers=_layers(reports[baseline.id], reports[candidate.id]),
            )
        )
    return ComparisonOut(
        baseline=baseline.id,
        audits=[AuditOut.model_validate(a) for a in audits],
        comparisons=comparisons,
    )


def _probe_values(session: Session, audit: Audit) -> dict[str, Any]:
    shards = session.scalars(select(AuditShard.result).where(AuditShard.audit_id == audit.id)).all()
    if not shards or any(result is None for result in shards):
        raise HTTPException(
            409, f"audit {audit.id} predates stored per-probe statistics; run it again"
        )
    results = [ShardResult.model_validate(result) for result in shards]
    return probe_values(results, AuditConfig.model_validate(audit.config))


def _unpaired_reason(baseline: dict[str, Any], candidate: dict[str, Any]) -> str | None:
    """None when both audits measured the same probes under the same shifts."""
    base, cand = baseline["provenance"], candidate["provenance"]
    if base["probe_set_sha256"] != cand["probe_set_sha256"]:
        return "the audits used different probe sets"
    if base["config"]["sweep"] != cand["config"]["sweep"]:
        return "the audits used different sweeps (shift family, range or sampling)"
    if baseline["input_size"] != candidate["input_size"]:
        return "the models take different input sizes, so the shifts differ in pixels"
    return None


def _shift_maps(baseline: dict[str, Any], candidate: dict[str, Any]) -> ShiftMapDifference | None:
    base, cand = baseline["shift_map"], candidate["shift_map"]
    if base["shifts"] != cand["shifts"]:
        return None
    return ShiftMapDifference(
        shifts=base["shifts"],
        baseline=base["agreement"],
        candidate=cand["agreement"],
        difference=[
            None if b is None or c is None else c - b
            for b, c in zip(base["agreement"], cand["agreement"], strict=True)
        ],
    )


def _layers(baseline: dict[str, Any], candidate: dict[str, Any]) -> list[LayerDifference]:
    base = {e["name"]: e for e in baseline["layers"]["entries"]}
    differences = []
    for entry in candidate["layers"]["entries"]:
        if entry["name"] not in base:
            continue
        b, c = base[entry["name"]].get("relative_error"), entry.get("relative_error")
        differences.append(
            LayerDifference(
                name=entry["name"],
                baseline_relative_error=b,
                candidate_relative_error=c,
                difference=None if b is None or c is None else c - b,
            )
        )
    return differences
