"""/v1/policies: a team's named gates for audits."""

from __future__ import annotations

from fastapi import APIRouter

from service.deps import Reader, SessionDep, Writer
from service.policies import service
from service.policies.repository import get_policy, policy_rows
from shiftaudit_api.policies import PolicyIn, PolicyOut

router = APIRouter(prefix="/v1/policies", tags=["policies"])


@router.post("", status_code=201)
def create_policy(body: PolicyIn, principal: Writer, session: SessionDep) -> PolicyOut:
    """Create a policy; audits name it in `policies` and carry its verdict when they finish.

    A policy never changes: audits are judged by the rules they were submitted with. To
    change one, delete it and create it again.
    """
    return service.create_policy(session=session, team_id=principal.team_id, body=body)


@router.get("")
def list_policies(principal: Reader, session: SessionDep) -> list[PolicyOut]:
    return [service.policy_out(row=row) for row in policy_rows(session, principal.team_id)]


@router.get("/{name}")
def get(name: str, principal: Reader, session: SessionDep) -> PolicyOut:
    return service.policy_out(row=get_policy(session, principal.team_id, name))


@router.delete("/{name}", status_code=204)
def delete_policy(name: str, principal: Writer, session: SessionDep) -> None:
    """Delete a policy; audits already submitted with it keep their snapshot."""
    service.delete_policy(session=session, team_id=principal.team_id, name=name)
