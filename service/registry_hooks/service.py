"""What the inbound registry hooks do: fetch a model version, register it like an upload,
and audit it with the team's defaults; and the MLflow connection they rely on."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import httpx
from pydantic import BaseModel, ValidationError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.audits.service import add_audit, capacity_for, dispatch, resolve_request
from service.audits.tables import Audit
from service.db import utcnow
from service.errors import Conflict, Invalid, NotFound, TooLarge, Unauthenticated, UpstreamFailed
from service.models.service import register_model
from service.models.tables import ModelFile
from service.policies.repository import team_policies
from service.probe_sets.service import PROBE_SETS
from service.probe_sets.tables import ProbeSetFile
from service.registry_hooks.mlflow_registry import (
    DELIVERY_HEADER,
    MAX_SKEW_S,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    TrackingServer,
    new_salt,
    signature_matches,
    tracking_uri_problem,
    webhook_secret,
)
from service.registry_hooks.tables import MlflowConnection, MlflowDelivery, TeamHookDefaults
from service.settings import Settings
from service.storage import ArtifactStorage, ArtifactTooLarge, StoredArtifact
from service.stored_files.repository import TeamFiles
from shiftaudit.config import AuditConfig
from shiftaudit_api.audits import AuditOut
from shiftaudit_api.registry_hooks import (
    GenericHook,
    HookAccepted,
    HookDefaults,
    MlflowConnectionIn,
    MlflowIgnored,
    MlflowPayload,
    MlflowVersionRef,
)
from shiftaudit_api.uploads import ModelOut, ModelUploaded

if TYPE_CHECKING:  # the queue imports the job runner, which imports the audits domain
    from service.queue import AuditQueue

FETCH_TIMEOUT_S = 60.0
CHUNK_BYTES = 1 << 20
SchemaT = TypeVar("SchemaT", bound=BaseModel)
UNSIGNED = (
    f"the delivery needs {DELIVERY_HEADER}, {TIMESTAMP_HEADER} and an {SIGNATURE_HEADER} "
    "made with this team's MLflow webhook secret"
)
NO_CONNECTION = "no MLflow connection: PUT /v1/hooks/mlflow/connection first"
NO_DEFAULTS = "no hook defaults set: PUT /v1/hooks/defaults first"


@dataclass(frozen=True)
class HookOutcome:
    """A hook's answer and whether it queued a new audit now (else: a replay)."""

    accepted: HookAccepted
    queued: bool


def set_defaults(
    *, session: Session, team_id: uuid.UUID, body: HookDefaults, gpu_types: list[str]
) -> HookDefaults:
    """Store what hooks audit new model versions with; checked as an audit request is."""
    TeamFiles(session, team_id, ProbeSetFile).get(body.probe_set_id, noun=PROBE_SETS.noun)
    resolve_request(session=session, team_id=team_id, request=body, gpu_types=gpu_types)
    session.merge(
        TeamHookDefaults(
            team_id=team_id,
            probe_set_id=body.probe_set_id,
            config=body.config.model_dump(mode="json"),
            policies=body.policies,
            gpu_type=body.gpu_type,
        )
    )
    session.commit()
    return body


def get_defaults(*, session: Session, team_id: uuid.UUID) -> HookDefaults:
    """The team's hook defaults; NotFound when it has none."""
    row = session.get(TeamHookDefaults, team_id)
    if row is None:
        raise NotFound(NO_DEFAULTS)
    return HookDefaults(
        probe_set_id=row.probe_set_id,
        config=AuditConfig.model_validate(row.config),
        policies=row.policies,
        gpu_type=row.gpu_type,
    )


def required_defaults(
    *, session: Session, team_id: uuid.UUID, gpu_types: list[str]
) -> TeamHookDefaults:
    """The team's hook defaults; Conflict when it has none, or when their GPU type is no
    longer one of the deployment's (its audits would wait for a worker that never comes)."""
    defaults = session.get(TeamHookDefaults, team_id)
    if defaults is None:
        raise Conflict(NO_DEFAULTS)
    if defaults.gpu_type is not None and defaults.gpu_type not in gpu_types:
        offered = ", ".join(gpu_types) or "none"
        raise Conflict(
            f"the hook defaults ask for GPU type {defaults.gpu_type!r}, which this deployment "
            f"no longer runs (SHIFTAUDIT_GPU_TYPES: {offered}): PUT /v1/hooks/defaults again"
        )
    return defaults


def allowed_url(*, url: str, prefixes: list[str]) -> bool:
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
    """Stream `url` into the storage, refusing it (TooLarge) as soon as it passes
    `max_bytes`."""
    try:
        with client.stream("GET", url, headers=headers) as fetched:
            if fetched.status_code != 200:
                raise UpstreamFailed(f"{source} answered {fetched.status_code} for {url}")
            return storage.put_stream(fetched.iter_bytes(CHUNK_BYTES), max_bytes=max_bytes)
    except httpx.HTTPError as error:
        raise UpstreamFailed(f"fetching {url}: {error}") from None
    except ArtifactTooLarge:
        raise TooLarge(f"the model is larger than the {max_bytes}-byte limit") from None


def audit_with_defaults(
    *,
    session: Session,
    storage: ArtifactStorage,
    queue: AuditQueue,
    team_id: uuid.UUID,
    defaults: TeamHookDefaults,
    settings: Settings,
    artifact: StoredArtifact,
    fields: dict[str, str],
    filename: str,
    record: Callable[[Audit], None] | None = None,
) -> HookAccepted:
    """Register fetched bytes like an upload and queue an audit of them with the hook
    defaults; `record` adds what must commit with the audit. Dispatched after the commit."""
    model, _ = register_model(
        session=session,
        storage=storage,
        team_id=team_id,
        artifact=artifact,
        raw_fields=fields,
        filename=filename,
    )
    probe_set = session.get_one(ProbeSetFile, defaults.probe_set_id)  # RESTRICT: still there
    audit = add_audit(
        session=session,
        team_id=team_id,
        model=session.get_one(ModelFile, model.id),
        probe_set=probe_set,
        config=AuditConfig.model_validate(defaults.config),
        policies=team_policies(session, team_id, defaults.policies),
        capacity=capacity_for(session=session, settings=settings, team_id=team_id),
        gpu_type=defaults.gpu_type,
    )
    if record is not None:
        record(audit)
    out = AuditOut.model_validate(audit)
    session.commit()
    dispatch(session=session, queue=queue, audit=audit)
    return HookAccepted(model=model, audit=out)


def generic_hook(
    *,
    session: Session,
    storage: ArtifactStorage,
    queue: AuditQueue,
    settings: Settings,
    team_id: uuid.UUID,
    body: GenericHook,
) -> HookAccepted:
    """A registry without MLflow announces a model version on an allow-listed store."""
    defaults = required_defaults(session=session, team_id=team_id, gpu_types=settings.gpu_types)
    if not allowed_url(url=body.model_url, prefixes=settings.hook_artifact_prefixes):
        raise Invalid(f"model_url: {body.model_url} is not on an allowed artifact store")
    with fetch_client() as client:
        artifact = fetch_artifact(
            client=client,
            storage=storage,
            url=body.model_url,
            headers={"Authorization": f"Bearer {body.token}"} if body.token else {},
            max_bytes=settings.max_model_bytes,
            source="the artifact store",
        )
    return audit_with_defaults(
        session=session,
        storage=storage,
        queue=queue,
        team_id=team_id,
        defaults=defaults,
        settings=settings,
        artifact=artifact,
        fields={"name": body.name, "version": body.version, "registry_ref": body.model_url},
        filename=body.model_url.rsplit("/", 1)[-1],
    )


def allowed_tracking_uri(*, uri: str, settings: Settings) -> str:
    """The tracking server's base URL (no trailing slash); Invalid unless the operator
    allows it: the service fetches from it, so an arbitrary URL would be server-side
    request forgery."""
    problem = tracking_uri_problem(uri)
    if problem is not None:
        raise Invalid(f"tracking_uri: {problem}")
    base = uri.rstrip("/")
    if not allowed_url(url=f"{base}/", prefixes=settings.hook_artifact_prefixes):
        raise Invalid(
            f"tracking_uri: {uri} is not under an allowed prefix "
            "(the operator's SHIFTAUDIT_HOOK_ARTIFACT_PREFIXES)"
        )
    return base


def connect_mlflow(
    *, session: Session, team_id: uuid.UUID, body: MlflowConnectionIn, settings: Settings
) -> tuple[MlflowConnection, str | None, bool]:
    """Save the team's MLflow connection; returns it, the webhook secret (the first time and
    on rotation only, else None) and whether it was created now."""
    tracking_uri = allowed_tracking_uri(uri=body.tracking_uri, settings=settings)
    row = session.get(MlflowConnection, team_id)
    created = row is None
    if row is None:
        row = MlflowConnection(team_id=team_id, secret_salt=new_salt())
        session.add(row)
    elif body.rotate_secret:
        row.secret_salt = new_salt()
    row.tracking_uri = tracking_uri
    row.events = list(dict.fromkeys(body.events))
    row.tracking_token = body.tracking_token
    row.updated_at = utcnow()
    session.commit()
    secret = None
    if created or body.rotate_secret:
        key = settings.secret_key.get_secret_value()
        secret = webhook_secret(secret_key=key, team_id=row.team_id, salt=row.secret_salt)
    return row, secret, created


def mlflow_connection(*, session: Session, team_id: uuid.UUID) -> MlflowConnection:
    """The team's MLflow connection; NotFound when it has none."""
    row = session.get(MlflowConnection, team_id)
    if row is None:
        raise NotFound(NO_CONNECTION)
    return row


def disconnect_mlflow(*, session: Session, team_id: uuid.UUID) -> None:
    """Deliveries for the team are refused from now on."""
    session.delete(mlflow_connection(session=session, team_id=team_id))
    session.commit()


def receive_mlflow_delivery(
    *,
    session: Session,
    storage: ArtifactStorage,
    queue: AuditQueue,
    settings: Settings,
    team: str,
    headers: Mapping[str, str],
    body: bytes,
) -> HookOutcome | MlflowIgnored:
    """Verify one delivery, then ignore it, answer it again, or audit its model version."""
    connection = _verified_connection(session, settings, team, headers, body)
    payload = _validated(MlflowPayload, body, "body")
    event = f"{payload.entity}.{payload.action}"
    if event not in connection.events:
        selected = ", ".join(connection.events)
        return MlflowIgnored(ignored=f"{event} is not one of this team's events ({selected})")
    delivery_id = headers[DELIVERY_HEADER]
    earlier = _earlier_delivery(session, connection.team_id, delivery_id)
    if earlier is not None:
        return _replayed(session, earlier)
    ref = _validated(MlflowVersionRef, payload.data, "data")
    defaults = required_defaults(
        session=session, team_id=connection.team_id, gpu_types=settings.gpu_types
    )
    with fetch_client() as client:
        server = TrackingServer(
            client=client,
            tracking_uri=allowed_tracking_uri(uri=connection.tracking_uri, settings=settings),
            token=connection.tracking_token,
        )
        path = server.model_file(name=ref.name, version=ref.version)
        artifact = fetch_artifact(
            client=client,
            storage=storage,
            url=server.download_url(path),
            headers=server.headers,
            max_bytes=settings.max_model_bytes,
            source="MLflow's artifact proxy",
        )

    def record(audit: Audit) -> None:
        session.add(
            MlflowDelivery(
                team_id=connection.team_id, delivery_id=delivery_id, event=event, audit_id=audit.id
            )
        )

    try:
        accepted = audit_with_defaults(
            session=session,
            storage=storage,
            queue=queue,
            team_id=connection.team_id,
            defaults=defaults,
            settings=settings,
            artifact=artifact,
            fields={
                "name": ref.name,
                "version": ref.version,
                "registry_ref": f"models:/{ref.name}/{ref.version}",
            },
            filename=path.rsplit("/", 1)[-1],
            record=record,
        )
    except IntegrityError:
        # The same delivery, processed at the same time, committed first: answer with its.
        session.rollback()
        earlier = _earlier_delivery(session, connection.team_id, delivery_id)
        if earlier is None:
            raise
        return _replayed(session, earlier)
    return HookOutcome(accepted=accepted, queued=True)


def _verified_connection(
    session: Session, settings: Settings, team: str, headers: Mapping[str, str], body: bytes
) -> MlflowConnection:
    """The team's connection when the delivery carries its signature and is fresh. An
    unknown team and a bad signature get the same answer, so team ids cannot be probed."""
    try:
        connection = session.get(MlflowConnection, uuid.UUID(team))
    except ValueError:
        connection = None
    # An unknown team is checked against a throwaway secret: the same work, the same answer.
    secret = "no-such-team"
    if connection is not None:
        key = settings.secret_key.get_secret_value()
        secret = webhook_secret(
            secret_key=key, team_id=connection.team_id, salt=connection.secret_salt
        )
    delivery_id = headers.get(DELIVERY_HEADER, "")
    timestamp = headers.get(TIMESTAMP_HEADER, "")
    signed = signature_matches(
        secret=secret,
        delivery_id=delivery_id,
        timestamp=timestamp,
        body=body,
        signature=headers.get(SIGNATURE_HEADER, ""),
    )
    if connection is None or not signed or not delivery_id or not timestamp:
        raise Unauthenticated(UNSIGNED)
    if len(delivery_id) > 100:
        raise Invalid(f"{DELIVERY_HEADER}: at most 100 characters")
    if not timestamp.isdigit():
        raise Unauthenticated(f"{TIMESTAMP_HEADER}: {timestamp!r} is not unix seconds")
    skew = int(time.time()) - int(timestamp)
    if abs(skew) > MAX_SKEW_S:
        when = "old" if skew > 0 else "ahead of this server's clock"
        raise Unauthenticated(
            f"stale delivery: {TIMESTAMP_HEADER} is {abs(skew)} s {when}; more than "
            f"{MAX_SKEW_S} s is refused (a replayed delivery, or clocks out of sync)"
        )
    return connection


def _validated(schema: type[SchemaT], value: bytes | dict[str, object], where: str) -> SchemaT:
    """`value` as `schema`; Invalid naming each problem."""
    try:
        if isinstance(value, bytes):
            return schema.model_validate_json(value)
        return schema.model_validate(value)
    except ValidationError as error:
        detail = "; ".join(
            f"{'.'.join(map(str, (where, *e['loc'])))}: {e['msg']}" for e in error.errors()
        )
        raise Invalid(detail) from None


def _earlier_delivery(
    session: Session, team_id: uuid.UUID, delivery_id: str
) -> MlflowDelivery | None:
    return session.scalar(
        select(MlflowDelivery).where(
            MlflowDelivery.team_id == team_id, MlflowDelivery.delivery_id == delivery_id
        )
    )


def _replayed(session: Session, delivery: MlflowDelivery) -> HookOutcome:
    """A processed delivery again: its model and audit (as the audit is now)."""
    audit = session.get_one(Audit, delivery.audit_id)
    model = session.get_one(ModelFile, audit.model_id)
    accepted = HookAccepted(
        model=ModelUploaded(**ModelOut.model_validate(model).model_dump(), deduplicated=True),
        audit=AuditOut.model_validate(audit),
    )
    return HookOutcome(accepted=accepted, queued=False)
