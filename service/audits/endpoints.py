"""/v1/audits: queue an audit, follow it, cancel it, read its report."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy.exc import IntegrityError

from service.audits import service
from service.audits.repository import AuditFilters, TeamAudits
from service.audits.thumbnails import ShiftedProbe, render_png
from service.deps import Reader, SessionDep, SettingsDep, Writer
from service.errors import Conflict
from service.guard import GuardedRoute
from service.idempotency import IdempotencyDep
from service.pagination import decode_cursor, page_of
from service.probe_sets.tables import ProbeSetFile
from shiftaudit.config import AuditConfig
from shiftaudit.report import Report
from shiftaudit_api.audits import AuditCreate, AuditEstimate, AuditOut, AuditStatus, AuditSummary
from shiftaudit_api.common import Page

router = APIRouter(prefix="/v1/audits", tags=["audits"], route_class=GuardedRoute)


@router.post(
    "",
    status_code=202,
    response_model=AuditOut,
    responses={200: {"model": AuditOut}},
)
def create_audit(
    body: AuditCreate,
    principal: Writer,
    session: SessionDep,
    settings: SettingsDep,
    request: Request,
    response: Response,
    idempotency: IdempotencyDep,
    reuse: Annotated[
        bool,
        Query(description="return a succeeded audit of the same model, probe set and config"),
    ] = True,
) -> AuditOut | JSONResponse:
    """Queue an audit; the row is committed before the job is handed to the queue.

    If this team already has a succeeded audit of the same model and probe-set bytes with the
    same config, that audit is returned (200, `reused: true`) unless `reuse=false`.
    """
    team_id = principal.team_id
    replayed = idempotency.replay(session, team_id)
    if replayed is not None:
        return _with_location(replayed)
    try:
        audit, created = service.create_audit(
            session=session,
            team_id=team_id,
            body=body,
            gpu_types=settings.gpu_types,
            capacity=service.capacity_for(session=session, settings=settings, team_id=team_id),
            reuse=reuse,
        )
        out = AuditOut.model_validate(audit).model_copy(update={"reused": not created})
        status_code = 202 if created else 200
        idempotency.record(session, team_id, status_code, out.model_dump(mode="json"))
        session.commit()  # never a job for a row that could still roll back
    except IntegrityError:
        # A concurrent request with this key won (answer as it did), or the model or probe
        # set was deleted while the audit's row was being written.
        session.rollback()
        replayed = idempotency.replay(session, team_id)
        if replayed is None:
            raise Conflict(
                "the model or probe set was deleted while this audit was being created"
            ) from None
        return _with_location(replayed)
    if created:
        service.dispatch(session=session, queue=request.app.state.queue, audit=audit)
    response.status_code = status_code
    response.headers["Location"] = f"/v1/audits/{audit.id}"
    return out


@router.post("/estimate", responses={429: {"model": AuditEstimate}})
def estimate_audit(
    body: AuditCreate, principal: Writer, session: SessionDep, settings: SettingsDep
) -> AuditEstimate:
    """What `POST /v1/audits` with this body would cost (forward passes of the model, sweep
    and layer profile) and whether the team's limits allow it now; nothing is queued."""
    team_id = principal.team_id
    return service.estimate_request(
        session=session,
        team_id=team_id,
        body=body,
        gpu_types=settings.gpu_types,
        capacity=service.capacity_for(session=session, settings=settings, team_id=team_id),
    )


def _with_location(replayed: JSONResponse) -> JSONResponse:
    body = json.loads(bytes(replayed.body))
    replayed.headers["Location"] = f"/v1/audits/{body['id']}"
    return replayed


@router.get("")
def list_audits(
    principal: Reader,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: str | None = None,
    status: AuditStatus | None = None,
    model_id: uuid.UUID | None = None,
    model_name: Annotated[str | None, Query(max_length=200)] = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
    order: Literal["newest", "oldest"] = "newest",
) -> Page[AuditSummary]:
    """The team's audits, filtered by status, model (id or name) and creation time.

    Times without a zone are taken as UTC. A cursor belongs to the filters and order that
    produced it.
    """
    filters = AuditFilters(
        status=status,
        model_id=model_id,
        model_name=model_name,
        created_after=_utc(created_after),
        created_before=_utc(created_before),
        order=order,
    )
    after = decode_cursor(cursor) if cursor else None
    rows = TeamAudits(session, principal.team_id).page(
        limit=limit + 1, after=after, filters=filters
    )
    return page_of(rows, limit=limit, schema=AuditSummary)


def _utc(moment: datetime | None) -> datetime | None:
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


@router.get("/{audit_id}")
def get_audit(audit_id: uuid.UUID, principal: Reader, session: SessionDep) -> AuditOut:
    return AuditOut.model_validate(TeamAudits(session, principal.team_id).get(audit_id))


@router.post("/{audit_id}/cancel", response_model=AuditOut)
def cancel_audit(
    audit_id: uuid.UUID, principal: Writer, session: SessionDep, idempotency: IdempotencyDep
) -> AuditOut | JSONResponse:
    """Cancel a queued or running audit; a running one stops at its next progress report."""
    replayed = idempotency.replay(session, principal.team_id)
    if replayed is not None:
        return replayed
    audit = service.cancel_audit(session=session, team_id=principal.team_id, audit_id=audit_id)
    out = AuditOut.model_validate(audit)
    try:
        idempotency.record(session, principal.team_id, 200, out.model_dump(mode="json"))
        session.commit()
    except IntegrityError:
        session.rollback()
        replayed = idempotency.replay(session, principal.team_id)
        if replayed is None:
            raise
        return replayed
    return out


@router.get("/{audit_id}/report")
def get_report(audit_id: uuid.UUID, principal: Reader, session: SessionDep) -> Report:
    """The engine's versioned report (schema: docs/report.schema.json)."""
    _, report = TeamAudits(session, principal.team_id).report(audit_id)
    return report


@router.get(
    "/{audit_id}/thumbnail",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}, "description": "a PNG"}},
)
def get_thumbnail(
    audit_id: uuid.UUID,
    principal: Reader,
    session: SessionDep,
    settings: SettingsDep,
    request: Request,
    probe: Annotated[str, Query(min_length=1, max_length=1000, description="the probe's name")],
    dy: Annotated[float, Query(description="a shift of the audit's sweep, in pixels")],
    dx: Annotated[float, Query(description="a shift of the audit's sweep, in pixels")],
) -> Response:
    """A probe preprocessed and shifted by (dy, dx) as in the audit's sweep, as a small PNG
    (for the worst cases of the report; the image is decoded, no model is loaded)."""
    audit, report = TeamAudits(session, principal.team_id).report(audit_id)
    probe_set = session.get_one(ProbeSetFile, audit.probe_set_id)
    shifted = ShiftedProbe(
        probe_set_sha256=probe_set.sha256,
        config=AuditConfig.model_validate(audit.config),
        input_size=report.input_size,
        probe=probe,
        dy=dy,
        dx=dx,
    )
    png = render_png(shifted, storage=request.app.state.storage, settings=settings)
    # The bytes never change for this URL; private: they belong to one team.
    return Response(
        png, media_type="image/png", headers={"Cache-Control": "private, max-age=86400"}
    )
