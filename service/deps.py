"""FastAPI dependencies, as `Annotated` aliases."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from service.db import session_scope
from service.errors import Forbidden, Unauthenticated
from service.settings import Settings
from service.teams.repository import authenticate
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


def get_principal(
    session: SessionDep,
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    if credentials is None:
        raise Unauthenticated("an API key is required (Authorization: Bearer ...)")
    row = authenticate(
        session, plaintext=credentials.credentials, pepper=settings.secret_key.get_secret_value()
    )
    if row is None:
        raise Unauthenticated("the API key is unknown or revoked")
    return Principal(team_id=row.team_id, team_name=row.team.name, scope=row.scope)


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
