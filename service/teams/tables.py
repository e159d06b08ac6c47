"""Teams and API keys. A key is stored only as an HMAC of its secret part."""

from __future__ import annotations

import enum
import uuid
from datetime import datetime

from sqlalchemy import Enum, ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column, relationship

from service.db import Base, RecordMixin, UTCDateTime


class Scope(enum.StrEnum):
    """Ordered: each scope includes the ones before it."""

    READ = "read"
    WRITE = "write"
    ADMIN = "admin"

    def allows(self, needed: Scope) -> bool:
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

    team: Mapped[Team] = relationship(back_populates="keys")
