"""Data access for audits, scoped to one team: the only tenant filter for these tables."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from service.audits.tables import Audit, AuditReport, AuditShard
from service.errors import Conflict, NotFound
from service.models.tables import ModelFile
from service.pagination import newest_first
from shiftaudit.report import Report
from shiftaudit_api.audits import OPEN_STATUSES, AuditStatus


class TeamAudits:
    """The audits one team can see."""

    def __init__(self, session: Session, team_id: uuid.UUID) -> None:
        self.session = session
        self.team_id = team_id

    def _select(self) -> Select[Audit]:
        return select(Audit).where(Audit.team_id == self.team_id)

    def get(self, audit_id: uuid.UUID) -> Audit:
        """The team's audit; NotFound otherwise."""
        row = self.session.scalar(self._select().where(Audit.id == audit_id))
        if row is None:
            raise NotFound(f"no audit with id {audit_id} in your team")
        return row

    def report(self, audit_id: uuid.UUID) -> tuple[Audit, Report]:
        """The audit and its report; Conflict while it has none (not succeeded, or not yet)."""
        audit = self.get(audit_id)
        stored = self.session.get(AuditReport, audit.id)
        if stored is None:
            raise Conflict(f"the audit is {audit.status.value}; no report (yet)")
        return audit, Report.model_validate(stored.report)

    def succeeded_with(self, request_hash: str) -> Audit | None:
        """The latest succeeded audit of this request hash (failed ones are never reused)."""
        return self.session.scalar(
            self._select()
            .where(Audit.request_hash == request_hash, Audit.status == AuditStatus.SUCCEEDED)
            .order_by(Audit.created_at.desc(), Audit.id.desc())
            .limit(1)
        )

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


def fairest_queued_shards(
    session: Session, *, route: str, now: datetime, limit: int = 20
) -> list[tuple[uuid.UUID, int]]:
    """Queued shards of open audits on one queue, every team's, fairest first: the team with
    the fewest shards running, then the one whose last shard started longest ago (a day's
    history; never first), then the oldest queued. (The scheduler's query: across teams by
    design, it returns ids only.)"""
    teams = (
        select(
            Audit.team_id,
            func.count().filter(AuditShard.status == AuditStatus.RUNNING).label("running"),
            func.max(AuditShard.started_at).label("last_started"),
        )
        .join(AuditShard, AuditShard.audit_id == Audit.id)
        .where(AuditShard.started_at > now - timedelta(days=1))
        .group_by(Audit.team_id)
        .subquery()
    )
    rows = session.execute(
        select(AuditShard.audit_id, AuditShard.shard)
        .join(Audit, Audit.id == AuditShard.audit_id)
        .outerjoin(teams, teams.c.team_id == Audit.team_id)
        .where(
            AuditShard.route == route,
            AuditShard.status == AuditStatus.QUEUED,
            Audit.status.in_(OPEN_STATUSES),
        )
        .order_by(
            func.coalesce(teams.c.running, 0),
            teams.c.last_started.asc().nulls_first(),
            AuditShard.queued_at,
            Audit.created_at,
            AuditShard.shard,
        )
        .limit(limit)
    ).all()
    return [(audit_id, shard) for audit_id, shard in rows]


@dataclass(frozen=True)
class AuditFilters:
    """What `GET /v1/audits` can narrow and order by."""

    status: AuditStatus | None = None
    model_id: uuid.UUID | None = None
    model_name: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    order: Literal["newest", "oldest"] = "newest"
