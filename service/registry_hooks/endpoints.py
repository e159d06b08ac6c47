"""/v1/hooks: team defaults, the generic registry hook and the MLflow hook (inbound)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.concurrency import run_in_threadpool

from service.deps import Admin, Reader, SessionDep, SettingsDep, Writer
from service.guard import GuardedRoute, read_capped
from service.idempotency import REPLAYED_HEADER
from service.registry_hooks import service
from service.registry_hooks.service import HookOutcome
from service.registry_hooks.tables import MlflowConnection
from shiftaudit_api.common import PROBLEM_JSON, Problem
from shiftaudit_api.registry_hooks import (
    GenericHook,
    HookAccepted,
    HookDefaults,
    MlflowConnectionIn,
    MlflowConnectionOut,
    MlflowConnectionSaved,
    MlflowIgnored,
)

router = APIRouter(prefix="/v1/hooks", tags=["hooks"], route_class=GuardedRoute)
MAX_DELIVERY_BYTES = 1 << 20


@router.put("/defaults")
def set_defaults(
    body: HookDefaults, principal: Admin, session: SessionDep, settings: SettingsDep
) -> HookDefaults:
    """What hooks audit new model versions with: probe set, config, policies, GPU type."""
    return service.set_defaults(
        session=session, team_id=principal.team_id, body=body, gpu_types=settings.gpu_types
    )


@router.get("/defaults")
def get_defaults(principal: Reader, session: SessionDep) -> HookDefaults:
    return service.get_defaults(session=session, team_id=principal.team_id)


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
    accepted = service.generic_hook(
        session=session,
        storage=request.app.state.storage,
        queue=request.app.state.queue,
        settings=settings,
        team_id=principal.team_id,
        body=body,
    )
    return _answer(HookOutcome(accepted=accepted, queued=True), response)


@router.put(
    "/mlflow/connection",
    responses={201: {"model": MlflowConnectionSaved, "description": "connected"}},
)
def connect_mlflow(
    body: MlflowConnectionIn,
    request: Request,
    response: Response,
    principal: Admin,
    session: SessionDep,
    settings: SettingsDep,
) -> MlflowConnectionSaved:
    """Connect the team's MLflow tracking server (201 the first time, then 200). The answer
    holds the URL to give MlflowClient().create_webhook and, on the first PUT and with
    rotate_secret only, the webhook secret."""
    row, secret, created = service.connect_mlflow(
        session=session, team_id=principal.team_id, body=body, settings=settings
    )
    response.status_code = 201 if created else 200
    return MlflowConnectionSaved(**_connection_out(row, request).model_dump(), secret=secret)


@router.get("/mlflow/connection")
def get_mlflow_connection(
    request: Request, principal: Reader, session: SessionDep
) -> MlflowConnectionOut:
    """The team's MLflow connection; its secret and tracking token are never shown."""
    return _connection_out(
        service.mlflow_connection(session=session, team_id=principal.team_id), request
    )


@router.delete("/mlflow/connection", status_code=204)
def delete_mlflow_connection(principal: Admin, session: SessionDep) -> None:
    """Disconnect: deliveries for the team are refused (401) from now on."""
    service.disconnect_mlflow(session=session, team_id=principal.team_id)


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
    body = await read_capped(request, limit=MAX_DELIVERY_BYTES, what="a delivery")
    outcome = await run_in_threadpool(
        service.receive_mlflow_delivery,
        session=session,
        storage=request.app.state.storage,
        queue=request.app.state.queue,
        settings=settings,
        team=team,
        headers=request.headers,
        body=body,
    )
    if isinstance(outcome, MlflowIgnored):
        response.status_code = 200
        return outcome
    return _answer(outcome, response)


def _answer(outcome: HookOutcome, response: Response) -> HookAccepted:
    """202 and the audit's Location for a new audit; 200, marked replayed, for a repeat."""
    response.status_code = 202 if outcome.queued else 200
    response.headers["Location"] = f"/v1/audits/{outcome.accepted.audit.id}"
    if not outcome.queued:
        response.headers[REPLAYED_HEADER] = "true"
    return outcome.accepted


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
