"""/v1/policies: a team's named gates for audits."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from service.deps import Admin, Reader, SessionDep
from service.guard import GuardedRoute
from service.pagination import next_page_link
from service.policies import service
from service.policies.repository import get_policy, policy_rows
from shiftaudit_api.policies import PolicyIn, PolicyOut

router = APIRouter(prefix="/v1/policies", tags=["policies"], route_class=GuardedRoute)


@router.post("", status_code=201)
def create_policy(body: PolicyIn, principal: Admin, session: SessionDep) -> PolicyOut:
    """Create a policy; audits name it in `policies` and carry its verdict when they finish.

    A policy never changes: audits are judged by the rules they were submitted with. To
    change one, delete it and create it again.
    """
    return service.create_policy(session=session, team_id=principal.team_id, body=body)


@router.get("")
def list_policies(
    principal: Reader,
    session: SessionDep,
    request: Request,
    response: Response,
    limit: Annotated[int, Query(ge=1, le=200)] = 100,
    after: Annotated[str | None, Query(max_length=100, description="the last name seen")] = None,
) -> list[PolicyOut]:
    """The team's policies by name, a page at a time: the `Link` header (rel="next") has the
    next page's address while there is one."""
    rows = policy_rows(session, principal.team_id, limit=limit + 1, after=after)
    if len(rows) > limit:
        response.headers.update(next_page_link(request, after=rows[limit - 1].name))
    return [service.policy_out(row=row) for row in rows[:limit]]


@router.get("/{name}")
def get(name: str, principal: Reader, session: SessionDep) -> PolicyOut:
    return service.policy_out(row=get_policy(session, principal.team_id, name))


@router.delete("/{name}", status_code=204)
def delete_policy(name: str, principal: Admin, session: SessionDep) -> None:
    """Delete a policy; audits already submitted with it keep their snapshot."""
    service.delete_policy(session=session, team_id=principal.team_id, name=name)
