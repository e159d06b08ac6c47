"""Data access for policies, scoped to one team."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.errors import Invalid, NotFound
from service.policies.tables import Policy


def team_policies(session: Session, team_id: uuid.UUID, names: list[str]) -> list[dict[str, Any]]:
    """Snapshots ({name, rules}) of the team's policies named, in the order given."""
    if len(set(names)) != len(names):
        raise Invalid("policies: a policy is named twice")
    rows = {
        p.name: p
        for p in session.scalars(
            select(Policy).where(Policy.team_id == team_id, Policy.name.in_(names))
        )
    }
    missing = [name for name in names if name not in rows]
    if missing:
        raise Invalid(f"policies: no policy named {', '.join(missing)} in your team")
    return [{"name": name, "rules": rows[name].rules} for name in names]


def get_policy(session: Session, team_id: uuid.UUID, name: str) -> Policy:
    """The team's policy of this name; NotFound otherwise."""
    row = session.scalar(select(Policy).where(Policy.team_id == team_id, Policy.name == name))
    if row is None:
        raise NotFound(f"no policy named {name} in your team")
    return row


def policy_rows(
    session: Session, team_id: uuid.UUID, *, limit: int, after: str | None
) -> list[Policy]:
    """The team's policies by name, `limit` of them after the name `after`."""
    query = select(Policy).where(Policy.team_id == team_id)
    if after is not None:
        query = query.where(Policy.name > after)
    return list(session.scalars(query.order_by(Policy.name).limit(limit)))
