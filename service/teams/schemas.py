"""Response bodies about the calling key."""

from __future__ import annotations

from pydantic import BaseModel


class Identity(BaseModel):
    team: str
    scope: str
