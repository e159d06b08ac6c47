"""Creating and deleting a team's policies; a policy never changes once made."""

from __future__ import annotations

import uuid

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.errors import Conflict
from service.policies.repository import get_policy
from service.policies.tables import Policy
from shiftaudit_api.policies import PolicyIn, PolicyOut, PolicyRules


def policy_out(*, row: Policy) -> PolicyOut:
    """A stored policy as its API body."""
    rules = PolicyRules.model_validate(row.rules)
    return PolicyOut(id=row.id, created_at=row.created_at, name=row.name, **dict(rules))


def create_policy(*, session: Session, team_id: uuid.UUID, body: PolicyIn) -> PolicyOut:
    """Store a new named policy; Conflict when the name is taken."""
    rules = PolicyRules.model_validate(body.model_dump(exclude={"name"}))
    row = Policy(team_id=team_id, name=body.name, rules=rules.model_dump(mode="json"))
    session.add(row)
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        raise Conflict(f"a policy named {body.name} already exists") from None
    return policy_out(row=row)


def delete_policy(*, session: Session, team_id: uuid.UUID, name: str) -> None:
    """Delete a policy; audits already submitted with it keep their snapshot."""
    session.delete(get_policy(session, team_id, name))
    session.commit()
