"""Bodies every part of the API shares: pages of a list, and problem details for errors."""

from __future__ import annotations

from typing import Any, Generic, TypeVar

from pydantic import BaseModel, Field

T = TypeVar("T")

PROBLEM_JSON = "application/problem+json"


class Page(BaseModel, Generic[T]):
    """One keyset page of a list, newest first unless asked otherwise."""

    items: list[T]
    next_cursor: str | None = Field(description="pass as `cursor` for the next page; null: last")


class Problem(BaseModel):
    """RFC 9457 problem details (application/problem+json); validation errors add `errors`."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    errors: list[dict[str, Any]] | None = None


class Identity(BaseModel):
    """The team and scope of the calling key."""

    team: str
    scope: str
