"""`hook_defaults`: what a team's registry hooks audit new model versions with."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import JSON, ForeignKey
from sqlalchemy.orm import Mapped, mapped_column

from service.db import Base


class HookDefaults(Base):
    __tablename__ = "hook_defaults"

    team_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("teams.id", ondelete="CASCADE"), primary_key=True
    )
    probe_set_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("probe_sets.id", ondelete="RESTRICT")
    )
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    policies: Mapped[list[str]] = mapped_column(JSON)
