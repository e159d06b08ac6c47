"""Creating, cancelling and dispatching audits: shared by POST /v1/audits and the registry
hooks. Nothing here commits a job before its row: the caller commits, then dispatches."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from service.audits.repository import TeamAudits
from service.audits.tables import Audit, AuditShard, shard_spans
from service.db import utcnow
from service.errors import Conflict, Invalid
from service.idempotency import canonical_hash
from service.models.service import MODELS
from service.models.tables import ModelFile
from service.policies.repository import team_policies
from service.probe_sets.service import PROBE_SETS
from service.probe_sets.tables import ProbeSetFile
from service.routing import route_for
from service.stored_files.repository import TeamFiles
from shiftaudit.config import AuditConfig
from shiftaudit_api.audits import OPEN_STATUSES, AuditCreate, AuditRequest, AuditStatus

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
    return policies


def create_audit(
    *,
    session: Session,
    team_id: uuid.UUID,
    body: AuditCreate,
    gpu_types: list[str],
    shard_probes: int,
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
        shard_probes=shard_probes,
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
    shard_probes: int,
    gpu_type: str | None = None,
) -> Audit:
    """Add a queued audit and its shards to the session (the caller commits, then
    dispatches)."""
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
    )
    session.add(audit)
    session.flush()
    spans = shard_spans(probe_set.image_count, shard_probes)
    session.add_all(
        AuditShard(audit_id=audit.id, shard=i, probe_start=start, probe_stop=stop)
        for i, (start, stop) in enumerate(spans)
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
    """Hand every shard of a committed audit to the queue."""
    shards = session.scalars(select(AuditShard.shard).where(AuditShard.audit_id == audit.id))
    for shard in shards.all():
        queue.enqueue(audit.id, shard, route=audit_route(audit=audit))


def audit_route(*, audit: Audit) -> str:
    """The queue of an audit's shards: by GPU type when it asked for one, else by device."""
    return route_for(audit.config["runtime"]["device"], audit.gpu_type)
