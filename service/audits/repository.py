"""Data access for audits, scoped to one team."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from fastapi import HTTPException
from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from service.audits.models import Audit, AuditReport, AuditStatus
from service.classifiers.models import ModelFile
from service.pagination import newest_first

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

    def report(self, audit_id: uuid.UUID) -> tuple[Audit, dict[str, Any]]:
        """The audit and its report; 409 while it has none (not succeeded, or not yet)."""
        audit = self.get(audit_id)
        stored = self.session.get(AuditReport, audit.id)
        if stored is None:
            raise HTTPException(409, f"the audit is {audit.status.value}; no report (yet)")
        return audit, stored.report

    def page(
        self, *, limit: int, after: tuple[datetime, uuid.UUID] | None, filters: AuditFilters
    ) -> list[Audit]:
        query = self._select()
        if filters.status is not None:
            query = query.where(Audit.status == filters.status)
        if filters.model_id is not None:
            query = query.where(Audit.model_id == filters.model_id)
        if filters.model_name is not None:
            named = select(ModelFile.id).where(
                ModelFile.team_id == self.team_id, ModelFile.name == filters.model_name
            )
            query = query.where(Audit.model_id.in_(named))
        if filters.created_after is not None:
            query = query.where(Audit.created_at >= filters.created_after)
        if filters.created_before is not None:
            query = query.where(Audit.created_at < filters.created_before)
        ordered = newest_first(
            query, Audit, after=after, limit=limit, oldest_first=filters.order == "oldest"
        )
        return list(self.session.scalars(ordered))


@dataclass(frozen=True)
class AuditFilters:
    """What `GET /v1/audits` can narrow and order by."""

    status: AuditStatus | None = None
    model_id: uuid.UUID | None = None
    model_name: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    order: Literal["newest", "oldest"] = "newest"
