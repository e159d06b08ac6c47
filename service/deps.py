"""FastAPI dependencies, as `Annotated` aliases."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from service.db import session_scope, utcnow
from service.errors import Forbidden, Unauthenticated
from service.settings import Settings
from service.teams.repository import check_key, touch
from service.teams.tables import Scope


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_session(request: Request) -> Iterator[Session]:
    yield from session_scope(request.app.state.sessions)


SettingsDep = Annotated[Settings, Depends(get_settings)]
# Function scope: the commit runs before the response is sent, so a failed commit answers
# 500 instead of a 2xx for rows that were never stored.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]
_bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer sa_...`")


@dataclass(frozen=True)
class Principal:
    """The caller: a team and what its key may do."""

    team_id: uuid.UUID
    team_name: str
    scope: Scope


# Where a route's GuardedRoute leaves the principal it authenticated before the body.
PRINCIPAL_KEY = "shiftaudit.principal"


def authenticate_request(request: Request) -> Principal:
    """The caller of `request`, from its Authorization header alone (no body is read), in a
    short transaction of its own; Unauthenticated when there is no live key."""
    known = request.scope.get(PRINCIPAL_KEY)
    if isinstance(known, Principal):
        return known
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("an API key is required (Authorization: Bearer ...)")
    settings: Settings = request.app.state.settings
    now = utcnow()
    with request.app.state.sessions.begin() as session:
        key = check_key(
            session,
            plaintext=token.strip(),
            pepper=settings.secret_key.get_secret_value(),
            now=now,
        )
        if key is None:
            raise Unauthenticated("the API key is unknown, revoked or expired")
        touch(session, key=key, now=now)
    principal = Principal(team_id=key.team_id, team_name=key.team_name, scope=key.scope)
    request.scope[PRINCIPAL_KEY] = principal
    return principal


def get_principal(
    request: Request,
    # Not read here: declared so that the OpenAPI document names the bearer scheme.
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    return authenticate_request(request)


def requires(scope: Scope) -> Callable[[Principal], Principal]:
    """A dependency admitting keys whose scope includes `scope`."""

    def check(principal: Annotated[Principal, Depends(get_principal)]) -> Principal:
        if not principal.scope.allows(scope):
            raise Forbidden(f"this endpoint needs a key with scope '{scope.value}'")
        return principal

    return check


Reader = Annotated[Principal, Depends(requires(Scope.READ))]
Writer = Annotated[Principal, Depends(requires(Scope.WRITE))]
Admin = Annotated[Principal, Depends(requires(Scope.ADMIN))]
