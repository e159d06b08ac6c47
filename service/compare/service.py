"""Compare succeeded audits of one team against a baseline, from their stored statistics."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.audits.repository import TeamAudits
from service.audits.tables import Audit, AuditReport, AuditShard
from service.errors import Conflict, Invalid
from service.models.tables import ModelFile
from shiftaudit.compare import compare
from shiftaudit.comparison import HIGHER_IS_BETTER
from shiftaudit.config import AuditConfig
from shiftaudit.engine import probe_values
from shiftaudit.report import LayerEntry, Report, ShardResult
from shiftaudit_api.audits import AuditOut, AuditStatus
from shiftaudit_api.comparisons import (
    CandidateComparison,
    ComparisonOut,
    FindingsPair,
    LayerDifference,
    LayerValues,
    ShiftMapDifference,
    TrendPoint,
)
from shiftaudit_api.policies import NoRegression

RESAMPLES = 2000
MAX_AUDITS = 8


def parse_audit_ids(*, text: str) -> list[uuid.UUID]:
    """Comma-separated audit ids, 2 to MAX_AUDITS of them, none twice; Invalid otherwise."""
    ids = []
    for part in text.split(","):
        try:
            ids.append(uuid.UUID(part.strip()))
        except ValueError:
            raise Invalid(f"audits: {part.strip()!r} is not an audit id") from None
    if not 2 <= len(ids) <= MAX_AUDITS:
        raise Invalid(f"audits: give 2 to {MAX_AUDITS} audit ids, not {len(ids)}")
    if len(set(ids)) != len(ids):
        raise Invalid("audits: an audit is listed twice")
    return ids


def compare_audits(*, session: Session, team_id: uuid.UUID, ids: list[uuid.UUID]) -> ComparisonOut:
    """The first audit is the baseline; every other one is compared with it."""
    audits = [TeamAudits(session, team_id).get(audit_id) for audit_id in ids]
    for audit in audits:
        if audit.status is not AuditStatus.SUCCEEDED:
            raise Conflict(
                f"audit {audit.id} is {audit.status.value}; only succeeded audits compare"
            )
    reports = {a.id: _report(session, a) for a in audits}
    values = {audit.id: _probe_values(session, audit) for audit in audits}
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
                findings=FindingsPair(
                    baseline=reports[baseline.id].layers.findings,
                    candidate=reports[candidate.id].layers.findings,
                ),
            )
        )
    return ComparisonOut(
        baseline=baseline.id,
        audits=[AuditOut.model_validate(a) for a in audits],
        comparisons=comparisons,
    )


def model_trend(
    *, session: Session, team_id: uuid.UUID, model_name: str, probe_set_id: uuid.UUID | None
) -> list[TrendPoint]:
    """Every version of a model name, oldest first, with its latest succeeded audit."""
    models = session.scalars(
        select(ModelFile)
        .where(ModelFile.team_id == team_id, ModelFile.name == model_name)
        .order_by(ModelFile.created_at, ModelFile.id)
    ).all()
    query = select(Audit).where(
        Audit.team_id == team_id,
        Audit.status == AuditStatus.SUCCEEDED,
        Audit.model_id.in_([m.id for m in models]),
    )
    if probe_set_id is not None:
        query = query.where(Audit.probe_set_id == probe_set_id)
    latest: dict[uuid.UUID, Audit] = {}
    for audit in session.scalars(query.order_by(Audit.created_at, Audit.id)):
        latest[audit.model_id] = audit  # later rows win
    return [
        TrendPoint(
            model_id=m.id,
            version=m.version,
            model_created_at=m.created_at,
            audit=AuditOut.model_validate(latest[m.id]) if m.id in latest else None,
        )
        for m in models
    ]


def _report(session: Session, audit: Audit) -> Report:
    return Report.model_validate(session.get_one(AuditReport, audit.id).report)


def _probe_values(session: Session, audit: Audit) -> dict[str, Any]:
    """The audit's per-probe statistics; Conflict for an audit from before they were kept."""
    shards = session.scalars(select(AuditShard.result).where(AuditShard.audit_id == audit.id)).all()
    if not shards or any(result is None for result in shards):
        raise Conflict(f"audit {audit.id} predates stored per-probe statistics; run it again")
    results = [ShardResult.model_validate(result) for result in shards]
    return probe_values(results, AuditConfig.model_validate(audit.config))


def _unpaired_reason(baseline: Report, candidate: Report) -> str | None:
    """None when both audits measured the same probes under the same shifts."""
    base, cand = baseline.provenance, candidate.provenance
    if base.probe_set_sha256 != cand.probe_set_sha256:
        return "the audits used different probe sets"
    if base.config.sweep != cand.config.sweep:
        return "the audits used different sweeps (shift family, range or sampling)"
    if baseline.input_size != candidate.input_size:
        return "the models take different input sizes, so the shifts differ in pixels"
    return None


def _shift_maps(baseline: Report, candidate: Report) -> ShiftMapDifference | None:
    base, cand = baseline.shift_map, candidate.shift_map
    if base.shifts != cand.shifts:
        return None
    return ShiftMapDifference(
        shifts=base.shifts,
        baseline=base.agreement,
        candidate=cand.agreement,
        difference=[
            None if b is None or c is None else c - b
            for b, c in zip(base.agreement, cand.agreement, strict=True)
        ],
    )


def _layers(baseline: Report, candidate: Report) -> list[LayerDifference]:
    base = {e.name: e for e in baseline.layers.entries}
    differences = []
    for entry in candidate.layers.entries:
        if entry.name not in base:
            continue
        b, c = base[entry.name].relative_error, entry.relative_error
        differences.append(
            LayerDifference(
                name=entry.name,
                baseline_relative_error=b,
                candidate_relative_error=c,
                difference=None if b is None or c is None else c - b,
                baseline=_values(base[entry.name]),
                candidate=_values(entry),
            )
        )
    return differences


def _values(entry: LayerEntry) -> LayerValues:
    field = entry.receptive_field
    return LayerValues(
        on_grid_error=entry.on_grid_error,
        off_grid_error=entry.off_grid_error,
        aliasing_error=entry.aliasing_error,
        local_aliasing=entry.local_aliasing,
        field_fraction=None if field is None else min(field.input_fraction),
        role=entry.role,
    )


def regression_reasons(
    *, session: Session, audit: Audit, report: Report, rule: NoRegression
) -> list[str]:
    """Why `audit` (whose report is not stored yet) regressed against the rule's baseline.

    A baseline that cannot be compared is a reason too (the gate fails, saying why), never
    an error: this runs inside a worker finishing the audit.
    """
    baseline = _baseline_for(session, audit, rule)
    if isinstance(baseline, str):
        return [baseline] if rule.baseline != "previous_version" else []
    reason = _unpaired_reason(_report(session, baseline), report)
    if reason is not None:
        return [f"cannot test for regression against audit {baseline.id}: {reason}"]
    try:
        base_values, values = _probe_values(session, baseline), _probe_values(session, audit)
    except Conflict as conflict:
        return [f"cannot test for regression against audit {baseline.id}: {conflict}"]
    result = compare(base_values, values, unpaired_reason=None, resamples=RESAMPLES)
    reasons = []
    for delta in result.deltas:
        if delta.metric not in rule.metrics or not delta.significant:
            continue
        worse = delta.delta < 0 if delta.metric in HIGHER_IS_BETTER else delta.delta > 0
        if worse:
            reasons.append(
                f"{delta.metric} regressed significantly against audit {baseline.id}: "
                f"{delta.delta:+.4g} (95% CI {delta.ci_low:+.4g} to {delta.ci_high:+.4g})"
            )
    test = result.mcnemar
    if (
        "invariant_fraction" in rule.metrics
        and test is not None
        and test.significant
        and test.baseline_only > test.candidate_only
    ):
        reasons.append(
            f"per-probe invariance regressed against audit {baseline.id} (exact McNemar "
            f"p = {test.p_value:.3g}: {test.baseline_only} probes lost it, "
            f"{test.candidate_only} gained it)"
        )
    return reasons


def _baseline_for(session: Session, audit: Audit, rule: NoRegression) -> Audit | str:
    """The baseline audit, or why there is none."""
    if rule.baseline != "previous_version":
        found = session.scalar(
            select(Audit).where(Audit.id == rule.baseline, Audit.team_id == audit.team_id)
        )
        if found is None or found.status is not AuditStatus.SUCCEEDED:
            return f"baseline audit {rule.baseline} is not a succeeded audit of this team"
        return found
    model = session.get_one(ModelFile, audit.model_id)
    earlier_models = select(ModelFile.id).where(
        ModelFile.team_id == audit.team_id,
        ModelFile.name == model.name,
        ModelFile.id != model.id,
        ModelFile.created_at < model.created_at,
    )
    found = session.scalar(
        select(Audit)
        .where(
            Audit.team_id == audit.team_id,
            Audit.status == AuditStatus.SUCCEEDED,
            Audit.probe_set_id == audit.probe_set_id,
            Audit.model_id.in_(earlier_models),
        )
        .order_by(Audit.created_at.desc(), Audit.id.desc())
        .limit(1)
    )
    return found if found is not None else "no earlier version of this model was audited"
