"""Data access for teams and keys."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from service.db import utcnow
from service.errors import NotFound
from service.teams import keys
from service.teams.tables import ApiKey, Scope, Team

# A key's last use is written at most this often: a request is not worth a write.
LAST_USED_EVERY = timedelta(minutes=1)


def get_or_create_team(session: Session, *, name: str) -> Team:
    """The team called `name`, created when missing."""
    team = session.scalar(select(Team).where(Team.name == name))
    if team is None:
        team = Team(name=name)
        session.add(team)
        session.flush()
    return team


def create_key(
    session: Session,
    *,
    team: Team,
    scope: Scope,
    pepper: str,
    name: str = "",
    expires_at: datetime | None = None,
) -> tuple[ApiKey, str]:
    """A new key for `team`; returns the row and the plaintext (shown once)."""
    issued = keys.issue(pepper)
    row = ApiKey(
        team_id=team.id,
        key_id=issued.key_id,
        secret_hash=issued.secret_hash,
        scope=scope,
        name=name,
        expires_at=expires_at,
    )
    session.add(row)
    session.flush()
    return row, issued.plaintext


@dataclass(frozen=True)
class LiveKey:
    """What a request needs of the key it came with."""

    id: uuid.UUID
    team_id: uuid.UUID
    team_name: str
    scope: Scope
    last_used_at: datetime | None


def check_key(
    session: Session, *, plaintext: str, pepper: str, now: datetime | None = None
) -> LiveKey | None:
    """The live key `plaintext` belongs to, or None, in one query.

    One path whatever the key id, up to the answer: the query reads the same columns whether
    a row exists or not, an unknown id's secret is checked against a dummy hash, and revoked
    and expired keys are refused only after the same check, so a known id with a wrong secret
    and an unknown id cost the same (the id cannot be probed by timing).
    """
    parsed = keys.parse(plaintext)
    if parsed is None:
        return None  # malformed: no key id to probe
    key_id, secret = parsed
    now = now or utcnow()
    found = session.execute(
        select(
            ApiKey.id,
            ApiKey.secret_hash,
            ApiKey.revoked_at,
            ApiKey.expires_at,
            ApiKey.last_used_at,
            ApiKey.team_id,
            ApiKey.scope,
            Team.name,
        )
        .join(Team, Team.id == ApiKey.team_id)
        .where(ApiKey.key_id == key_id)
    ).first()
    secret_hash = keys.DUMMY_HASH if found is None else found.secret_hash
    matches = keys.matches(secret, secret_hash, pepper)
    expired = found is not None and found.expires_at is not None and found.expires_at <= now
    if found is None or found.revoked_at is not None or expired or not matches:
        return None
    return LiveKey(found.id, found.team_id, found.name, found.scope, found.last_used_at)


def authenticate(
    session: Session, *, plaintext: str, pepper: str, now: datetime | None = None
) -> ApiKey | None:
    """The live key row `plaintext` belongs to, or None (`check_key`, then the row)."""
    found = check_key(session, plaintext=plaintext, pepper=pepper, now=now)
    return None if found is None else session.get_one(ApiKey, found.id)


def touch(session: Session, *, key: LiveKey, now: datetime) -> None:
    """Record that the key was used now, unless that was recorded less than LAST_USED_EVERY
    ago (the condition is in the UPDATE: concurrent requests write it once)."""
    if key.last_used_at is not None and key.last_used_at > now - LAST_USED_EVERY:
        return
    session.execute(
        update(ApiKey)
        .where(
            ApiKey.id == key.id,
            or_(ApiKey.last_used_at.is_(None), ApiKey.last_used_at <= now - LAST_USED_EVERY),
        )
        .values(last_used_at=now)
    )


def team_keys(session: Session, team_id: uuid.UUID) -> list[ApiKey]:
    """The team's keys, revoked and expired ones included, oldest first."""
    return list(
        session.scalars(
            select(ApiKey).where(ApiKey.team_id == team_id).order_by(ApiKey.created_at, ApiKey.id)
        )
    )


def team_key(session: Session, team_id: uuid.UUID, key_id: str) -> ApiKey:
    """The team's key with this public id; NotFound for another team's, as for none."""
    row = session.scalar(select(ApiKey).where(ApiKey.key_id == key_id, ApiKey.team_id == team_id))
    if row is None:
        raise NotFound("no API key with this id in your team")
    return row


def all_keys(session: Session, *, team: str | None = None) -> list[tuple[ApiKey, str]]:
    """Every key with its team's name (of one team when given): for the operator's CLI."""
    query = select(ApiKey, Team.name).join(Team, Team.id == ApiKey.team_id)
    if team is not None:
        query = query.where(Team.name == team)
    rows = session.execute(query.order_by(Team.name, ApiKey.created_at, ApiKey.id)).all()
    return [(row, name) for row, name in rows]


def key_by_id(session: Session, key_id: str) -> ApiKey:
    """Any team's key with this public id (the operator's CLI); NotFound otherwise."""
    row = session.scalar(select(ApiKey).where(ApiKey.key_id == key_id))
    if row is None:
        raise NotFound(f"no API key with id {key_id}")
    return row
