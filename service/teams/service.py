"""A team's own keys, managed through the API with an admin key."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from service.teams.repository import create_key, team_key, team_keys
from service.teams.tables import Scope, Team
from shiftaudit_api.keys import ApiKeyCreate, ApiKeyOut, CreatedApiKey


def list_keys(*, session: Session, team_id: uuid.UUID) -> list[ApiKeyOut]:
    """The team's keys, revoked and expired ones included."""
    return [ApiKeyOut.model_validate(row) for row in team_keys(session, team_id)]


def issue_key(
    *, session: Session, team_id: uuid.UUID, body: ApiKeyCreate, pepper: str, now: datetime
) -> CreatedApiKey:
    """A new key for the caller's team; its plaintext is in this answer only."""
    team = session.get_one(Team, team_id)
    expires_at = None if body.expires_in_s is None else now + timedelta(seconds=body.expires_in_s)
    row, plaintext = create_key(
        session,
        team=team,
        scope=Scope(body.scope),
        pepper=pepper,
        name=body.name,
        expires_at=expires_at,
    )
    session.commit()
    return CreatedApiKey(**ApiKeyOut.model_validate(row).model_dump(), key=plaintext)


def revoke_key(*, session: Session, team_id: uuid.UUID, key_id: str, now: datetime) -> None:
    """Revoke one of the team's keys (NotFound for another team's); revoking twice keeps
    the first time."""
    row = team_key(session, team_id, key_id)
    if row.revoked_at is None:
        row.revoked_at = now
    session.commit()
