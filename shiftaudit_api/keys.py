"""Bodies of /v1/keys: the team's own API keys, managed with an admin key."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

KeyScope = Literal["read", "write", "admin"]
# Ten years: a key that outlives that should be issued without an expiry, on purpose.
MAX_EXPIRES_IN_S = 10 * 365 * 24 * 3600


class ApiKeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    scope: KeyScope = Field(description="read, write or admin (each includes the ones before)")
    name: str = Field("", max_length=100, description="a label, e.g. the pipeline using it")
    expires_in_s: int | None = Field(
        None,
        ge=60,
        le=MAX_EXPIRES_IN_S,
        description="seconds until the key is refused, like a revoked one; null: never",
    )


class ApiKeyOut(BaseModel):
    """A key as its team sees it: never its secret, which is kept only as a hash."""

    model_config = ConfigDict(from_attributes=True)

    key_id: str = Field(description="the public part: sa_<key_id>_<secret>")
    name: str
    scope: KeyScope
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None = Field(description="to within a minute")
    revoked_at: datetime | None


class CreatedApiKey(ApiKeyOut):
    key: str = Field(description="the whole key, `sa_<key_id>_<secret>`; shown only now")
