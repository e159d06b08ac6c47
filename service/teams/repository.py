"""Data access for teams and keys."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.teams import keys
from service.teams.tables import ApiKey, Scope, Team


def get_or_create_team(session: Session, *, name: str) -> Team:
    """The team called `name`, created when missing."""
    team = session.scalar(select(Team).where(Team.name == name))
    if team is None:
        team = Team(name=name)
        session.add(team)
        session.flush()
    return team


def create_key(
    session: Session, *, team: Team, scope: Scope, pepper: str, name: str = ""
) -> tuple[ApiKey, str]:
    """A new key for `team`; returns the row and the plaintext (shown once)."""
    issued = keys.issue(pepper)
    row = ApiKey(
        team_id=team.id,
        key_id=issued.key_id,
        secret_hash=issued.secret_hash,
        scope=scope,
        name=name,
    )
    session.add(row)
    session.flush()
    return row, issued.plaintext


def authenticate(session: Session, *, plaintext: str, pepper: str) -> ApiKey | None:
    """The live key row `plaintext` belongs to, or None."""
    parsed = keys.parse(plaintext)
    if parsed is None:
        return None
    key_id, secret = parsed
    row = session.scalar(select(ApiKey).where(ApiKey.key_id == key_id))
    if row is None or row.revoked_at is not None:
        return None
    return row if keys.matches(secret, row.secret_hash, pepper) else None
