"""/v1/hooks: team defaults, the generic registry hook and the MLflow hook."""

from __future__ import annotations

import time
import uuid
from typing import Annotated, TypeVar

from fastapi import APIRouter, HTTPException, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from starlette.datastructures import Headers

from service.audits.models import Audit
from service.audits.schemas import AuditOut
from service.audits.service import check_gpu_type
from service.classifiers.models import ModelFile
from service.classifiers.schemas import ModelOut, ModelUploaded
from service.db import utcnow
from service.deps import Reader, SessionDep, SettingsDep, Writer
from service.hooks.mlflow_registry import (
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
from service.hooks.models import HookDefaults, MlflowConnection, MlflowDelivery
from service.hooks.schemas import (
    MlflowConnectionIn,
    MlflowConnectionOut,
    MlflowConnectionSaved,
    MlflowIgnored,
    MlflowPayload,
    MlflowVersionRef,
)
from service.hooks.service import (
    allowed_url,
    audit_with_defaults,
    fetch_artifact,
    fetch_client,
    required_defaults,
)
from service.idempotency import REPLAYED_HEADER
from service.policies.repository import team_policies
from service.probe_sets.models import ProbeSetFile
from service.problems import PROBLEM_JSON, Problem
from service.routing import GPU_TYPE_NAME
from service.settings import Settings
from service.storage import ArtifactStorage
from service.stored_files import TeamFiles
from shiftaudit.config import AuditConfig

SchemaT = TypeVar("SchemaT", bound=BaseModel)
router = APIRouter(prefix="/v1/hooks", tags=["hooks"])
MAX_DELIVERY_BYTES = 1 << 20
UNSIGNED = (
    f"the delivery needs {DELIVERY_HEADER}, {TIMESTAMP_HEADER} and an {SIGNATURE_HEADER} "
    "made with this team's MLflow webhook secret"
)
NO_CONNECTION = "no MLflow connection: PUT /v1/hooks/mlflow/connection first"


class Defaults(BaseModel):
    model_config = ConfigDict(extra="forbid")

    probe_set_id: uuid.UUID
    config: AuditConfig = Field(default_factory=AuditConfig)
    policies: list[str] = Field(default_factory=list, max_length=20)
    gpu_type: str | None = Field(
        None,
        pattern=GPU_TYPE_NAME,
        description="hook audits run only on workers for this GPU type (one of the "
        "deployment's SHIFTAUDIT_GPU_TYPES); needs runtime.device cuda or auto",
    )


class GenericHook(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model_url: str = Field(max_length=2000, description="on an allow-listed artifact store")
    name: str = Field(min_length=1, max_length=200)
    version: str = Field(min_length=1, max_length=100)
    token: str | None = Field(None, max_length=4000, description="bearer token for the store")


class HookAccepted(BaseModel):
    model: ModelUploaded
    audit: AuditOut


@router.put("/defaults")
def set_defaults(
    body: Defaults, principal: Writer, session: SessionDep, settings: SettingsDep
) -> Defaults:
    """What hooks audit new model versions with: probe set, config, policies, GPU type."""
    if TeamFiles(session, principal.team_id, ProbeSetFile).get(body.probe_set_id) is None:
        raise HTTPException(404, f"no probe set with id {body.probe_set_id} in your team")
    team_policies(session, principal.team_id, body.policies)  # they must exist now
    check_gpu_type(gpu_type=body.gpu_type, config=body.config, known=settings.gpu_types)
    session.merge(
        HookDefaults(
            team_id=principal.team_id,
            probe_set_id=body.probe_set_id,
            config=body.config.model_dump(mode="json"),
            policies=body.policies,
            gpu_type=body.gpu_type,
        )
    )
    session.commit()
    return body


@router.get("/defaults")
def get_defaults(principal: Reader, session: SessionDep) -> Defaults:
    row = session.get(HookDefaults, principal.team_id)
    if row is None:
        raise HTTPException(404, "no hook defaults set: PUT /v1/hooks/defaults first")
    return Defaults(
        probe_set_id=row.probe_set_id,
        config=row.config,
        policies=row.policies,
        gpu_type=row.gpu_type,
    )


@router.post("/generic", status_code=202)
def generic_hook(
    body: GenericHook,
    request: Request,
    response: Response,
    principal: Writer,
    session: SessionDep,
    settings: SettingsDep,
) -> HookAccepted:
    """A registry without MLflow announces a model version: the model is fetched from an
    allow-listed artifact store (with the bearer token, if given), registered, and audited
    with the team's hook defaults."""
    defaults = required_defaults(session, principal.team_id, gpu_types=settings.gpu_types)
    if not allowed_url(body.model_url, settings.hook_artifact_prefixes):
        raise HTTPException(422, f"model_url: {body.model_url} is not on an allowed artifact store")
    storage: ArtifactStorage = request.app.state.storage
    with fetch_client() as client:
        artifact = fetch_artifact(
            client=client,
            storage=storage,
            url=body.model_url,
            headers={"Authorization": f"Bearer {body.token}"} if body.token else {},
            max_bytes=settings.max_model_bytes,
            source="the artifact store",
        )
    model, audit = audit_with_defaults(
        session=session,
        storage=storage,
        queue=request.app.state.queue,
        team_id=principal.team_id,
        defaults=defaults,
        shard_probes=settings.shard_probes,
        artifact=artifact,
        fields={"name": body.name, "version": body.version, "registry_ref": body.model_url},
        filename=body.model_url.rsplit("/", 1)[-1],
        response=response,
    )
    return HookAccepted(model=model, audit=audit)


@router.put(
    "/mlflow/connection",
    responses={201: {"model": MlflowConnectionSaved, "description": "connected"}},
)
def connect_mlflow(
    body: MlflowConnectionIn,
    request: Request,
    response: Response,
    principal: Writer,
    session: SessionDep,
    settings: SettingsDep,
) -> MlflowConnectionSaved:
    """Connect the team's MLflow tracking server (201 the first time, then 200). The answer
    holds the URL to give MlflowClient().create_webhook and, on the first PUT and with
    rotate_secret only, the webhook secret."""
    tracking_uri = _allowed_tracking_uri(body.tracking_uri, settings)
    row = session.get(MlflowConnection, principal.team_id)
    created = row is None
    if row is None:
        row = MlflowConnection(team_id=principal.team_id, secret_salt=new_salt())
        session.add(row)
    elif body.rotate_secret:
        row.secret_salt = new_salt()
    row.tracking_uri = tracking_uri
    row.events = list(dict.fromkeys(body.events))
    row.tracking_token = body.tracking_token
    row.updated_at = utcnow()
    session.commit()
    response.status_code = 201 if created else 200
    secret = None
    if created or body.rotate_secret:
        key = settings.secret_key.get_secret_value()
        secret = webhook_secret(secret_key=key, team_id=row.team_id, salt=row.secret_salt)
    return MlflowConnectionSaved(**_connection_out(row, request).model_dump(), secret=secret)


@router.get("/mlflow/connection")
def get_mlflow_connection(
    request: Request, principal: Reader, session: SessionDep
) -> MlflowConnectionOut:
    """The team's MLflow connection; its secret and tracking token are never shown."""
    row = session.get(MlflowConnection, principal.team_id)
    if row is None:
        raise HTTPException(404, NO_CONNECTION)
    return _connection_out(row, request)


@router.delete("/mlflow/connection", status_code=204)
def delete_mlflow_connection(principal: Writer, session: SessionDep) -> None:
    """Disconnect: deliveries for the team are refused (401) from now on."""
    row = session.get(MlflowConnection, principal.team_id)
    if row is None:
        raise HTTPException(404, NO_CONNECTION)
    session.delete(row)
    session.commit()


@router.post(
    "/mlflow",
    status_code=202,
    response_model=HookAccepted | MlflowIgnored,
    responses={
        200: {
            "model": HookAccepted | MlflowIgnored,
            "description": "an event the team did not select, or a delivery already "
            "processed (answered with its audit)",
        },
        502: {
            "description": "the tracking server answered an error",
            "content": {PROBLEM_JSON: {"schema": Problem.model_json_schema()}},
        },
    },
)
async def mlflow_hook(
    request: Request,
    response: Response,
    team: Annotated[str, Query(max_length=100, description="the team id, from webhook_url")],
    session: SessionDep,
    settings: SettingsDep,
) -> HookAccepted | MlflowIgnored:
    """MLflow's model-registry webhook, authenticated by its signature alone (MLflow cannot
    send an API key). A selected event's model version is fetched from the team's tracking
    server, registered and audited with the hook defaults, once per delivery id."""
    body = await _read_delivery(request)
    return await run_in_threadpool(
        _receive,
        request=request,
        response=response,
        team=team,
        body=body,
        session=session,
        settings=settings,
    )


def _receive(
    *,
    request: Request,
    response: Response,
    team: str,
    body: bytes,
    session: Session,
    settings: Settings,
) -> HookAccepted | MlflowIgnored:
    """Verify, then ignore, replay or audit one delivery."""
    connection = _verified_connection(session, settings, team, request.headers, body)
    payload = _validated(MlflowPayload, body, "body")
    event = f"{payload.entity}.{payload.action}"
    if event not in connection.events:
        response.status_code = 200
        selected = ", ".join(connection.events)
        return MlflowIgnored(ignored=f"{event} is not one of this team's events ({selected})")
    delivery_id = request.headers[DELIVERY_HEADER]
    earlier = _earlier_delivery(session, connection.team_id, delivery_id)
    if earlier is not None:
        return _replayed(session, earlier, response)
    ref = _validated(MlflowVersionRef, payload.data, "data")
    defaults = required_defaults(session, connection.team_id, gpu_types=settings.gpu_types)
    storage: ArtifactStorage = request.app.state.storage
    with fetch_client() as client:
        server = TrackingServer(
            client=client,
            tracking_uri=_allowed_tracking_uri(connection.tracking_uri, settings),
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
        model, audit = audit_with_defaults(
            session=session,
            storage=storage,
            queue=request.app.state.queue,
            team_id=connection.team_id,
            defaults=defaults,
            shard_probes=settings.shard_probes,
            artifact=artifact,
            fields={
                "name": ref.name,
                "version": ref.version,
                "registry_ref": f"models:/{ref.name}/{ref.version}",
            },
            filename=path.rsplit("/", 1)[-1],
            response=response,
            record=record,
        )
    except IntegrityError:
        # The same delivery, processed at the same time, committed first: answer with its.
        session.rollback()
        earlier = _earlier_delivery(session, connection.team_id, delivery_id)
        if earlier is None:
            raise
        return _replayed(session, earlier, response)
    return HookAccepted(model=model, audit=audit)


async def _read_delivery(request: Request) -> bytes:
    """The raw body, exactly as signed, refused (413) beyond MAX_DELIVERY_BYTES."""
    too_large = HTTPException(413, f"a delivery is at most {MAX_DELIVERY_BYTES} bytes")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_DELIVERY_BYTES:
        raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_DELIVERY_BYTES:
            raise too_large
    return bytes(body)


def _verified_connection(
    session: Session, settings: Settings, team: str, headers: Headers, body: bytes
) -> MlflowConnection:
    """The team's connection when the delivery carries its signature and is fresh. An
    unknown team and a bad signature get the same 401, so team ids cannot be probed."""
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
        raise HTTPException(401, UNSIGNED)
    if len(delivery_id) > 100:
        raise HTTPException(422, f"{DELIVERY_HEADER}: at most 100 characters")
    if not timestamp.isdigit():
        raise HTTPException(401, f"{TIMESTAMP_HEADER}: {timestamp!r} is not unix seconds")
    skew = int(time.time()) - int(timestamp)
    if abs(skew) > MAX_SKEW_S:
        when = "old" if skew > 0 else "ahead of this server's clock"
        raise HTTPException(
            401,
            f"stale delivery: {TIMESTAMP_HEADER} is {abs(skew)} s {when}; more than "
            f"{MAX_SKEW_S} s is refused (a replayed delivery, or clocks out of sync)",
        )
    return connection


def _validated(schema: type[SchemaT], value: bytes | dict[str, object], where: str) -> SchemaT:
    """`value` as `schema`; 422 naming each problem."""
    try:
        if isinstance(value, bytes):
            return schema.model_validate_json(value)
        return schema.model_validate(value)
    except ValidationError as error:
        detail = "; ".join(
            f"{'.'.join(map(str, (where, *e['loc'])))}: {e['msg']}" for e in error.errors()
        )
        raise HTTPException(422, detail) from None


def _earlier_delivery(
    session: Session, team_id: uuid.UUID, delivery_id: str
) -> MlflowDelivery | None:
    return session.scalar(
        select(MlflowDelivery).where(
            MlflowDelivery.team_id == team_id, MlflowDelivery.delivery_id == delivery_id
        )
    )


def _replayed(session: Session, delivery: MlflowDelivery, response: Response) -> HookAccepted:
    """A processed delivery again: its model and audit (as the audit is now), 200."""
    audit = session.get_one(Audit, delivery.audit_id)
    model = session.get_one(ModelFile, audit.model_id)
    response.status_code = 200
    response.headers["Location"] = f"/v1/audits/{audit.id}"
    response.headers[REPLAYED_HEADER] = "true"
    return HookAccepted(
        model=ModelUploaded(**ModelOut.model_validate(model).model_dump(), deduplicated=True),
        audit=AuditOut.model_validate(audit),
    )


def _allowed_tracking_uri(uri: str, settings: Settings) -> str:
    """The tracking server's base URL (no trailing slash); 422 unless the operator allows it:
    the service fetches from it, so an arbitrary URL would be server-side request forgery."""
    problem = tracking_uri_problem(uri)
    if problem is not None:
        raise HTTPException(422, f"tracking_uri: {problem}")
    base = uri.rstrip("/")
    if not allowed_url(f"{base}/", settings.hook_artifact_prefixes):
        raise HTTPException(
            422,
            f"tracking_uri: {uri} is not under an allowed prefix "
            "(the operator's SHIFTAUDIT_HOOK_ARTIFACT_PREFIXES)",
        )
    return base


def _connection_out(row: MlflowConnection, request: Request) -> MlflowConnectionOut:
    # A query parameter, so that the receiver's path stays exactly /v1/hooks/mlflow.
    url = request.url_for("mlflow_hook").include_query_params(team=str(row.team_id))
    return MlflowConnectionOut(
        tracking_uri=row.tracking_uri,
        events=row.events,
        has_tracking_token=row.tracking_token is not None,
        webhook_url=str(url),
        created_at=row.created_at,
        updated_at=row.updated_at,
    )
