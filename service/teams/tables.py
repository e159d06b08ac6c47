"""Teams and API keys. A key is stored only as an HMAC of its secret part."""

from __future__ import annotations

import enum
import uuid
from datetime import datetime

from sqlalchemy import Enum, ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column, relationship

from service.db import Base, RecordMixin, UTCDateTime


class Scope(enum.StrEnum):
    """Ordered: each scope includes the ones before it. read: read everything of the team;
    write: also upload, audit, cancel and delete uploads; admin: also create, change and
    delete the team's keys, policies, webhooks and hook settings."""

    READ = "read"
    WRITE = "write"
    ADMIN = "admin"

    def allows(self, needed: Scope) -> bool:
        """Whether a key of this scope may do what `needed` allows."""
        order = list(Scope)
        return order.index(self) >= order.index(needed)


class Team(RecordMixin, Base):
    __tablename__ = "teams"

    name: Mapped[str] = mapped_column(String(100), unique=True)
    keys: Mapped[list[ApiKey]] = relationship(back_populates="team")


class ApiKey(RecordMixin, Base):
    __tablename__ = "api_keys"

    team_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"))
    # The public part of the key, used to find the row; the secret part is only hashed.
    key_id: Mapped[str] = mapped_column(String(32), unique=True)
    secret_hash: Mapped[str] = mapped_column(String(64))
    scope: Mapped[Scope] = mapped_column(
        Enum(Scope, name="api_key_scope", values_callable=lambda e: [m.value for m in e])
    )
    name: Mapped[str] = mapped_column(String(100), default="")
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    # Past it the key is refused like a revoked one; None: it never expires.
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    # Written at most once a minute per key (LAST_USED_EVERY), not once a request.
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)

    team: Mapped[Team] = relationship(back_populates="keys")
