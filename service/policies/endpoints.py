"""/v1/policies: a team's named gates for audits."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from service.deps import Reader, SessionDep, Writer
from service.policies.models import Policy
from service.policies.repository import get_policy
from service.policies.schemas import PolicyIn, PolicyOut, PolicyRules

router = APIRouter(prefix="/v1/policies", tags=["policies"])


def _out(row: Policy) -> PolicyOut:
    rules = PolicyRules.model_validate(row.rules)
    return PolicyOut(id=row.id, created_at=row.created_at, name=row.name, **dict(rules))


@router.post("", status_code=201)
def create_policy(body: PolicyIn, principal: Writer, session: SessionDep) -> PolicyOut:
    """Create a policy; audits name it in `policies` and carry its verdict when they finish.

    A policy never changes: audits are judged by the rules they were submitted with. To
    change one, delete it and create it again.
    """
    rules = PolicyRules.model_validate(body.model_dump(exclude={"name"}))
    row = Policy(team_id=principal.team_id, name=body.name, rules=rules.model_dump(mode="json"))
    session.add(row)
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        raise HTTPException(409, f"a policy named {body.name} already exists") from None
    return _out(row)


@router.get("")
def list_policies(principal: Reader, session: SessionDep) -> list[PolicyOut]:
    rows = session.scalars(
        select(Policy).where(Policy.team_id == principal.team_id).order_by(Policy.name)
    )
    return [_out(row) for row in rows]


@router.get("/{name}")
def get(name: str, principal: Reader, session: SessionDep) -> PolicyOut:
    return _out(get_policy(session, principal.team_id, name))


@router.delete("/{name}", status_code=204)
def delete_policy(name: str, principal: Writer, session: SessionDep) -> None:
    """Delete a policy; audits already submitted with it keep their snapshot."""
    session.delete(get_policy(session, principal.team_id, name))
    session.commit()
