"""Creating, cancelling and dispatching audits: shared by POST /v1/audits and the registry
hooks. Nothing here commits a job before its row: the caller commits, then dispatches."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from service.audits.repository import TeamAudits
from service.audits.tables import Audit, AuditShard, shard_spans
from service.db import utcnow
from service.errors import Conflict, Invalid, TooMany
from service.idempotency import canonical_hash
from service.models.service import MODELS
from service.models.tables import ModelFile
from service.policies.repository import team_policies
from service.probe_sets.service import PROBE_SETS
from service.probe_sets.tables import ProbeSetFile
from service.routing import route_for
from service.settings import Settings, TeamLimits
from service.stored_files.repository import TeamFiles
from service.teams.tables import Team
from shiftaudit.config import AuditConfig
from shiftaudit.cost import audit_cost, check_geometry
from shiftaudit.errors import ConfigError
from shiftaudit_api.audits import (
    OPEN_STATUSES,
    AuditCreate,
    AuditEstimate,
    AuditRequest,
    AuditStatus,
)

if TYPE_CHECKING:  # the queue imports the job runner, which imports this domain
    from service.queue import AuditQueue


def request_hash(
    *, model: ModelFile, probe_set: ProbeSetFile, config: AuditConfig, policies: list[Any]
) -> str:
    """What makes two audit requests the same (a succeeded one may then be reused)."""
    return canonical_hash(
        {
            "model_sha256": model.sha256,
            "probe_set_sha256": probe_set.sha256,
            "config": config.model_dump(mode="json"),
        }
        # Policies join the hash only when given, so earlier audits stay reusable.
        | ({"policies": policies} if policies else {})
    )


def check_gpu_type(*, gpu_type: str | None, config: AuditConfig, known: list[str]) -> None:
    """Invalid unless the GPU type is one the deployment runs workers for, on a GPU audit."""
    if gpu_type is None:
        return
    if gpu_type not in known:
        offered = ", ".join(known) or "none: SHIFTAUDIT_GPU_TYPES is empty"
        raise Invalid(f"gpu_type: {gpu_type!r} is not a GPU type of this deployment ({offered})")
    if config.runtime.device == "cpu":
        raise Invalid("gpu_type: an audit with runtime.device cpu runs on no GPU")


def resolve_request(
    *, session: Session, team_id: uuid.UUID, request: AuditRequest, gpu_types: list[str]
) -> list[dict[str, Any]]:
    """Check an audit request against the team and the deployment; returns the snapshots
    of its policies ({name, rules}), as the audit will be judged by them."""
    policies = team_policies(session, team_id, request.policies)
    check_gpu_type(gpu_type=request.gpu_type, config=request.config, known=gpu_types)
    if request.config.preprocess.input_size is not None:
        _check_geometry(request.config, request.config.preprocess.input_size)
    return policies


def _check_geometry(config: AuditConfig, input_size: tuple[int, int]) -> None:
    try:
        check_geometry(config, input_size)
    except ConfigError as error:
        raise Invalid(f"config: {error}") from error


def estimate(
    *,
    session: Session,
    team_id: uuid.UUID,
    model: ModelFile,
    probe_set: ProbeSetFile,
    config: AuditConfig,
    limits: TeamLimits,
    shard_probes: int,
    shard_forward_passes: int,
) -> AuditEstimate:
    """What auditing this model on this probe set would cost, and whether the team's
    limits allow it now; Invalid when the config cannot run at the model's input size."""
    declared = (
        (model.input_height, model.input_width)
        if model.input_height is not None and model.input_width is not None
        else None
    )
    size = config.preprocess.input_size or declared
    if size is not None:
        _check_geometry(config, size)
    try:
        cost = audit_cost(config=config, probes=probe_set.image_count, input_size=size)
    except ConfigError as error:
        raise Invalid(f"config: {error}") from error
    open_audits = int(
        session.scalar(
            select(func.count())
            .select_from(Audit)
            .where(Audit.team_id == team_id, Audit.status.in_(OPEN_STATUSES))
        )
        or 0
    )
    assert limits.max_forward_passes_per_audit is not None
    assert limits.max_open_audits_per_team is not None
    reason = None
    if cost.forward_passes > limits.max_forward_passes_per_audit:
        reason = (
            f"the audit needs {cost.forward_passes} forward passes, more than this team's "
            f"limit of {limits.max_forward_passes_per_audit}: use fewer probes or shifts "
            "(a larger sweep.step, or sweep.sampling)"
        )
    elif open_audits >= limits.max_open_audits_per_team:
        reason = (
            f"the team has {open_audits} queued or running audits, its limit: try again when "
            "some have finished"
        )
    spans = shard_spans(
        probe_set.image_count,
        _probes_per_shard(cost.evaluations_per_probe, shard_probes, shard_forward_passes),
    )
    return AuditEstimate(
        probes=cost.probes,
        input_size=size,
        evaluations_per_probe=cost.evaluations_per_probe,
        sweep_forward_passes=cost.sweep_forward_passes,
        layer_forward_passes=cost.layer_forward_passes,
        forward_passes=cost.forward_passes,
        shards=len(spans),
        max_forward_passes_per_audit=limits.max_forward_passes_per_audit,
        open_audits=open_audits,
        max_open_audits_per_team=limits.max_open_audits_per_team,
        allowed=reason is None,
        reason=reason,
    )


def _probes_per_shard(per_probe: int, shard_probes: int, shard_forward_passes: int) -> int:
    """At most `shard_probes` probes, and no more forward passes than `shard_forward_passes`."""
    return max(1, min(shard_probes, shard_forward_passes // max(per_probe, 1)))


def refuse_over_limits(found: AuditEstimate) -> None:
    """Invalid (the audit itself is too large) or TooMany (the team has too much open),
    with the estimate and the limit as the problem's members."""
    if found.allowed:
        return
    assert found.reason is not None
    if found.forward_passes > found.max_forward_passes_per_audit:
        raise Invalid(
            found.reason,
            forward_passes=found.forward_passes,
            max_forward_passes_per_audit=found.max_forward_passes_per_audit,
        )
    raise TooMany(
        found.reason,
        open_audits=found.open_audits,
        max_open_audits_per_team=found.max_open_audits_per_team,
    )


@dataclass(frozen=True)
class Capacity:
    """What the deployment lets one team's audit use: its limits and the shard sizes."""

    limits: TeamLimits
    shard_probes: int
    shard_forward_passes: int


def capacity_for(*, session: Session, settings: Settings, team_id: uuid.UUID) -> Capacity:
    """The limits and shard sizes that apply to one team's audits."""
    team = session.get_one(Team, team_id)
    return Capacity(
        limits=settings.limits_for(team.name),
        shard_probes=settings.shard_probes,
        shard_forward_passes=settings.shard_forward_passes,
    )


def estimate_request(
    *,
    session: Session,
    team_id: uuid.UUID,
    body: AuditCreate,
    gpu_types: list[str],
    capacity: Capacity,
) -> AuditEstimate:
    """POST /v1/audits/estimate: the request checked as if it were made, nothing queued."""
    model = TeamFiles(session, team_id, ModelFile).get(body.model_id, noun=MODELS.noun)
    probe_set = TeamFiles(session, team_id, ProbeSetFile).get(
        body.probe_set_id, noun=PROBE_SETS.noun
    )
    resolve_request(session=session, team_id=team_id, request=body, gpu_types=gpu_types)
    return _estimate_for(session, team_id, model, probe_set, body.config, capacity)


def _estimate_for(
    session: Session,
    team_id: uuid.UUID,
    model: ModelFile,
    probe_set: ProbeSetFile,
    config: AuditConfig,
    capacity: Capacity,
) -> AuditEstimate:
    return estimate(
        session=session,
        team_id=team_id,
        model=model,
        probe_set=probe_set,
        config=config,
        limits=capacity.limits,
        shard_probes=capacity.shard_probes,
        shard_forward_passes=capacity.shard_forward_passes,
    )


def create_audit(
    *,
    session: Session,
    team_id: uuid.UUID,
    body: AuditCreate,
    gpu_types: list[str],
    capacity: Capacity,
    reuse: bool,
) -> tuple[Audit, bool]:
    """A queued audit added to the session (True), or the team's succeeded audit of the same
    request when `reuse` (False). The caller commits, then dispatches a new one."""
    model = TeamFiles(session, team_id, ModelFile).get(body.model_id, noun=MODELS.noun)
    probe_set = TeamFiles(session, team_id, ProbeSetFile).get(
        body.probe_set_id, noun=PROBE_SETS.noun
    )
    policies = resolve_request(session=session, team_id=team_id, request=body, gpu_types=gpu_types)
    same = request_hash(model=model, probe_set=probe_set, config=body.config, policies=policies)
    earlier = TeamAudits(session, team_id).succeeded_with(same) if reuse else None
    if earlier is not None:
        return earlier, False
    audit = add_audit(
        session=session,
        team_id=team_id,
        model=model,
        probe_set=probe_set,
        config=body.config,
        policies=policies,
        capacity=capacity,
        gpu_type=body.gpu_type,
    )
    return audit, True


def add_audit(
    *,
    session: Session,
    team_id: uuid.UUID,
    model: ModelFile,
    probe_set: ProbeSetFile,
    config: AuditConfig,
    policies: list[dict[str, Any]],
    capacity: Capacity,
    gpu_type: str | None = None,
) -> Audit:
    """Add a queued audit and its shards to the session (the caller commits, then
    dispatches), once its estimate is within the team's limits."""
    found = _estimate_for(session, team_id, model, probe_set, config, capacity)
    refuse_over_limits(found)
    route = route_for(config.runtime.device, gpu_type)
    audit = Audit(
        team_id=team_id,
        model_id=model.id,
        probe_set_id=probe_set.id,
        config=config.model_dump(mode="json"),
        gpu_type=gpu_type,
        status=AuditStatus.QUEUED,
        progress=0.0,
        request_hash=request_hash(
            model=model, probe_set=probe_set, config=config, policies=policies
        ),
        policies=policies or None,
        forward_passes=found.forward_passes,
    )
    session.add(audit)
    session.flush()
    per_shard = _probes_per_shard(
        found.evaluations_per_probe, capacity.shard_probes, capacity.shard_forward_passes
    )
    session.add_all(
        AuditShard(audit_id=audit.id, shard=i, probe_start=start, probe_stop=stop, route=route)
        for i, (start, stop) in enumerate(shard_spans(probe_set.image_count, per_shard))
    )
    return audit


def cancel_audit(*, session: Session, team_id: uuid.UUID, audit_id: uuid.UUID) -> Audit:
    """Cancel a queued or running audit (a running one stops at its next progress report);
    Conflict when it already finished."""
    audit = TeamAudits(session, team_id).get(audit_id)
    session.execute(
        update(Audit)
        .where(Audit.id == audit.id, Audit.status.in_(OPEN_STATUSES))
        .values(status=AuditStatus.CANCELLED, finished_at=utcnow())
    )
    session.refresh(audit)
    if audit.status is not AuditStatus.CANCELLED:
        raise Conflict(f"the audit already finished as {audit.status.value}")
    return audit


def dispatch(*, session: Session, queue: AuditQueue, audit: Audit) -> None:
    """Hand every shard of a committed audit to its queue."""
    shards = session.execute(
        select(AuditShard.shard, AuditShard.route).where(AuditShard.audit_id == audit.id)
    )
    for shard, route in shards.all():
        queue.enqueue(audit.id, shard, route=route)
