"""What every registry hook does: fetch the model, register it, audit it with the defaults."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import httpx
from fastapi import HTTPException, Response
from sqlalchemy.orm import Session

from service.audits.models import Audit
from service.audits.schemas import AuditOut
from service.audits.service import add_audit, dispatch
from service.classifiers.endpoints import register_model
from service.classifiers.models import ModelFile
from service.classifiers.schemas import ModelUploaded
from service.hooks.models import HookDefaults
from service.policies.repository import team_policies
from service.probe_sets.models import ProbeSetFile
from service.storage import ArtifactStorage, ArtifactTooLarge, StoredArtifact
from service.stored_files import TeamFiles
from shiftaudit.config import AuditConfig

if TYPE_CHECKING:  # the queue imports the job runner, which imports the audits domain
    from service.queue import AuditQueue

FETCH_TIMEOUT_S = 60.0
CHUNK_BYTES = 1 << 20


def required_defaults(
    session: Session, team_id: uuid.UUID, *, gpu_types: list[str]
) -> HookDefaults:
    """The team's hook defaults; 409 when it has none, or when their GPU type is no longer
    one of the deployment's (its audits would wait for a worker that never comes)."""
    defaults = session.get(HookDefaults, team_id)
    if defaults is None:
        raise HTTPException(409, "no hook defaults set: PUT /v1/hooks/defaults first")
    if defaults.gpu_type is not None and defaults.gpu_type not in gpu_types:
        offered = ", ".join(gpu_types) or "none"
        raise HTTPException(
            409,
            f"the hook defaults ask for GPU type {defaults.gpu_type!r}, which this deployment "
            f"no longer runs (SHIFTAUDIT_GPU_TYPES: {offered}): PUT /v1/hooks/defaults again",
        )
    return defaults


def allowed_url(url: str, prefixes: list[str]) -> bool:
    """Whether `url` is under one of the operator's allowed prefixes."""
    return any(url.startswith(p) for p in prefixes)


def fetch_client() -> httpx.Client:
    """A client for registries and artifact stores: redirects are not followed, so an
    allowed store cannot send the service to an address the operator did not allow."""
    return httpx.Client(timeout=FETCH_TIMEOUT_S, follow_redirects=False)


def fetch_artifact(
    *,
    client: httpx.Client,
    storage: ArtifactStorage,
    url: str,
    headers: Mapping[str, str],
    max_bytes: int,
    source: str,
) -> StoredArtifact:
    """Stream `url` into the storage, refusing it (413) as soon as it passes `max_bytes`."""
    try:
        with client.stream("GET", url, headers=headers) as fetched:
            if fetched.status_code != 200:
                raise HTTPException(502, f"{source} answered {fetched.status_code} for {url}")
            return storage.put_stream(fetched.iter_bytes(CHUNK_BYTES), max_bytes=max_bytes)
    except httpx.HTTPError as error:
        raise HTTPException(502, f"fetching {url}: {error}") from None
    except ArtifactTooLarge:
        raise HTTPException(413, f"the model is larger than the {max_bytes}-byte limit") from None


def _nothing(_: Audit) -> None:
    pass


def audit_with_defaults(
    *,
    session: Session,
    storage: ArtifactStorage,
    queue: AuditQueue,
    team_id: uuid.UUID,
    defaults: HookDefaults,
    shard_probes: int,
    artifact: StoredArtifact,
    fields: dict[str, str],
    filename: str,
    response: Response,
    record: Callable[[Audit], None] = _nothing,
) -> tuple[ModelUploaded, AuditOut]:
    """Register fetched bytes like an upload and queue an audit of them with the hook
    defaults; `record` adds what must commit with the audit (202 + Location)."""
    model = register_model(session, storage, team_id, artifact, fields, filename, response)
    probe_set = TeamFiles(session, team_id, ProbeSetFile).get(defaults.probe_set_id)
    assert probe_set is not None  # RESTRICT: a defaults' probe set cannot be deleted
    audit = add_audit(
        session=session,
        team_id=team_id,
        model=session.get_one(ModelFile, model.id),
        probe_set=probe_set,
        config=AuditConfig.model_validate(defaults.config),
        policies=team_policies(session, team_id, defaults.policies),
        shard_probes=shard_probes,
        gpu_type=defaults.gpu_type,
    )
    record(audit)
    out = AuditOut.model_validate(audit)
    session.commit()
    dispatch(session=session, queue=queue, audit=audit)
    response.status_code = 202
    response.headers["Location"] = f"/v1/audits/{audit.id}"
    return model, out
