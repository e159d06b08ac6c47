"""Creating audits: shared by POST /v1/audits and the registry hooks."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

from fastapi import HTTPException
from sqlalchemy import select
from sqlalchemy.orm import Session

from service.audits.models import Audit, AuditShard, AuditStatus, shard_spans
from service.classifiers.models import ModelFile
from service.idempotency import canonical_hash
from service.probe_sets.models import ProbeSetFile
from service.routing import route_for
from shiftaudit.config import AuditConfig

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
    """422 unless the GPU type is one the deployment runs workers for, on a GPU audit."""
    if gpu_type is None:
        return
    if gpu_type not in known:
        offered = ", ".join(known) or "none: SHIFTAUDIT_GPU_TYPES is empty"
        raise HTTPException(
            422, f"gpu_type: {gpu_type!r} is not a GPU type of this deployment ({offered})"
        )
    if config.runtime.device == "cpu":
        raise HTTPException(422, "gpu_type: an audit with runtime.device cpu runs on no GPU")


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


def dispatch(*, session: Session, queue: AuditQueue, audit: Audit) -> None:
    """Hand every shard of a committed audit to the queue."""
    shards = session.scalars(select(AuditShard.shard).where(AuditShard.audit_id == audit.id))
    for shard in shards.all():
        queue.enqueue(audit.id, shard, route=audit_route(audit))


def audit_route(audit: Audit) -> str:
    """The queue of an audit's shards: by GPU type when it asked for one, else by device."""
    return route_for(audit.config["runtime"]["device"], audit.gpu_type)
