"""/v1/audits: queue an audit, follow it, cancel it, read its report."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request, Response
from sqlalchemy import Select, and_, or_, select, update
from sqlalchemy.orm import Session

from service.audits.models import Audit, AuditReport, AuditStatus
from service.audits.schemas import AuditCreate, AuditOut
from service.classifiers.models import ModelFile
from service.db import utcnow
from service.deps import Reader, SessionDep, Writer
from service.pagination import Page, decode_cursor, page_of
from service.probe_sets.models import ProbeSetFile
from service.stored_files import TeamFiles

router = APIRouter(prefix="/v1/audits", tags=["audits"])
NOT_FOUND = "no audit with this id in your team"


class TeamAudits:
    """The audits one team can see: the only tenant filter for this table."""

    def __init__(self, session: Session, team_id: uuid.UUID) -> None:
        self.session = session
        self.team_id = team_id

    def _select(self) -> Select[Audit]:
        return select(Audit).where(Audit.team_id == self.team_id)

    def get(self, audit_id: uuid.UUID) -> Audit:
        row = self.session.scalar(self._select().where(Audit.id == audit_id))
        if row is None:
            raise HTTPException(404, NOT_FOUND)
        return row

    def page(
        self,
        *,
        limit: int,
        after: tuple[datetime, uuid.UUID] | None,
        status: AuditStatus | None,
        model_id: uuid.UUID | None,
    ) -> list[Audit]:
        query = self._select()
        if status is not None:
            query = query.where(Audit.status == status)
        if model_id is not None:
            query = query.where(Audit.model_id == model_id)
        if after is not None:
            created, row_id = after
            query = query.where(
                or_(
                    Audit.created_at < created, and_(Audit.created_at == created, Audit.id < row_id)
                )
            )
        query = query.order_by(Audit.created_at.desc(), Audit.id.desc()).limit(limit)
        return list(self.session.scalars(query))


@router.post("", status_code=202, responses={404: {}, 422: {}})
def create_audit(
    body: AuditCreate,
    principal: Writer,
    session: SessionDep,
    request: Request,
    response: Response,
) -> AuditOut:
    """Queue an audit; the row is committed before the job is handed to the queue."""
    for row_type, row_id, what in (
        (ModelFile, body.model_id, "model"),
        (ProbeSetFile, body.probe_set_id, "probe set"),
    ):
        if TeamFiles(session, principal.team_id, row_type).get(row_id) is None:
            raise HTTPException(404, f"no {what} with id {row_id} in your team")
    audit = Audit(
        team_id=principal.team_id,
        model_id=body.model_id,
        probe_set_id=body.probe_set_id,
        config=body.config.model_dump(mode="json"),
        status=AuditStatus.QUEUED,
        progress=0.0,
    )
    session.add(audit)
    session.commit()  # never a job for a row that could still roll back
    request.app.state.queue.enqueue(audit.id)
    response.headers["Location"] = f"/v1/audits/{audit.id}"
    return AuditOut.model_validate(audit)


@router.get("")
def list_audits(
    principal: Reader,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: str | None = None,
    status: AuditStatus | None = None,
    model_id: uuid.UUID | None = None,
) -> Page[AuditOut]:
    """The team's audits, newest first, filtered by status and model."""
    after = decode_cursor(cursor) if cursor else None
    rows = TeamAudits(session, principal.team_id).page(
        limit=limit + 1, after=after, status=status, model_id=model_id
    )
    return page_of(rows, limit=limit, schema=AuditOut)


@router.get("/{audit_id}", responses={404: {}})
def get_audit(audit_id: uuid.UUID, principal: Reader, session: SessionDep) -> AuditOut:
    return AuditOut.model_validate(TeamAudits(session, principal.team_id).get(audit_id))


@router.post("/{audit_id}/cancel", responses={404: {}, 409: {}})
def cancel_audit(audit_id: uuid.UUID, principal: Writer, session: SessionDep) -> AuditOut:
    """Cancel a queued or running audit; a running one stops at its next progress report."""
    audit = TeamAudits(session, principal.team_id).get(audit_id)
    session.execute(
        update(Audit)
        .where(Audit.id == audit.id, Audit.status.in_([AuditStatus.QUEUED, AuditStatus.RUNNING]))
        .values(status=AuditStatus.CANCELLED, finished_at=utcnow())
    )
    session.refresh(audit)
    if audit.status is not AuditStatus.CANCELLED:
        raise HTTPException(409, f"the audit already finished as {audit.status.value}")
    return AuditOut.model_validate(audit)


@router.get("/{audit_id}/report", responses={404: {}, 409: {}})
def get_report(audit_id: uuid.UUID, principal: Reader, session: SessionDep) -> dict[str, Any]:
    """The engine's versioned report (schema: docs/report.schema.json)."""
    audit = TeamAudits(session, principal.team_id).get(audit_id)
    stored = session.get(AuditReport, audit.id)
    if stored is None:
        raise HTTPException(409, f"the audit is {audit.status.value}; no report (yet)")
    return stored.report
