"""Data access for policies, scoped to one team."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import HTTPException
from sqlalchemy import select
from sqlalchemy.orm import Session

from service.policies.models import Policy


def team_policies(session: Session, team_id: uuid.UUID, names: list[str]) -> list[dict[str, Any]]:
    """Snapshots ({name, rules}) of the team's policies named, in the order given."""
    if len(set(names)) != len(names):
        raise HTTPException(422, "policies: a policy is named twice")
    rows = {
        p.name: p
        for p in session.scalars(
            select(Policy).where(Policy.team_id == team_id, Policy.name.in_(names))
        )
    }
    missing = [name for name in names if name not in rows]
    if missing:
        raise HTTPException(422, f"policies: no policy named {', '.join(missing)} in your team")
    return [{"name": name, "rules": rows[name].rules} for name in names]


def get_policy(session: Session, team_id: uuid.UUID, name: str) -> Policy:
    row = session.scalar(select(Policy).where(Policy.team_id == team_id, Policy.name == name))
    if row is None:
        raise HTTPException(404, f"no policy named {name} in your team")
    return row
