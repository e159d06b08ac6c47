"""/v1/me (who is calling) and /v1/keys (the team's own keys, with an admin key)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from service.db import utcnow
from service.deps import Admin, Reader, SessionDep, SettingsDep
from service.guard import GuardedRoute
from service.teams import service
from shiftaudit_api.common import Identity
from shiftaudit_api.keys import ApiKeyCreate, ApiKeyOut, CreatedApiKey

router = APIRouter(prefix="/v1", tags=["teams"], route_class=GuardedRoute)
KeyId = Annotated[str, Path(pattern="^[0-9a-f]{16}$", description="the key's public id")]


@router.get("/me")
def me(principal: Reader) -> Identity:
    """The team and scope of the calling key."""
    return Identity(team=principal.team_name, scope=principal.scope.value)


@router.get("/keys", tags=["keys"])
def list_keys(principal: Admin, session: SessionDep) -> list[ApiKeyOut]:
    """The team's keys (never their secrets), revoked and expired ones included."""
    return service.list_keys(session=session, team_id=principal.team_id)


@router.post("/keys", status_code=201, tags=["keys"])
def create_key(
    body: ApiKeyCreate, principal: Admin, session: SessionDep, settings: SettingsDep
) -> CreatedApiKey:
    """Issue a key for the caller's team; `key` is shown in this answer only."""
    return service.issue_key(
        session=session,
        team_id=principal.team_id,
        body=body,
        pepper=settings.secret_key.get_secret_value(),
        now=utcnow(),
    )


@router.delete("/keys/{key_id}", status_code=204, tags=["keys"])
def revoke_key(key_id: KeyId, principal: Admin, session: SessionDep) -> None:
    """Revoke one of the team's keys: it is refused from the next request on."""
    service.revoke_key(session=session, team_id=principal.team_id, key_id=key_id, now=utcnow())
