"""`Idempotency-Key` for the POST endpoints that create or change audits.

A client may send `Idempotency-Key: <1-200 visible ASCII characters>`. The first successful
response is stored per (team, key) with a fingerprint of the request, in the same transaction
as the work it reports; a retry with the same key and request gets that response again
(`Idempotency-Replayed: true`) and does nothing, the same key with another request is a 422.
Two concurrent first requests race on the (team_id, key) unique constraint: the loser rolls
back its work and replays the winner's response. Only successful responses are stored, so a
request that failed (404, 409, 422) may be retried with the same key. A key lives
`KEY_LIFETIME` (24 hours, as Stripe's do): after that the same key acts again, and the
reconciler deletes expired keys, so the table holds one day of keys rather than every key
ever sent.

Uploads (`POST /v1/models`, `POST /v1/probe-sets`) take the key too; their fingerprint
includes the uploaded bytes' sha256, so it is checked after streaming
(`service.stored_files.endpoints.answer_upload`). Without a key they are still idempotent by
content: a re-upload of the same bytes is a 200 with `deduplicated: true` and the existing row.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import Depends, Header, Request
from fastapi.responses import JSONResponse
from sqlalchemy import JSON, ForeignKey, Index, Integer, String, UniqueConstraint, delete, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from service.db import Base, RecordMixin, utcnow
from service.errors import Invalid

REPLAYED_HEADER = "Idempotency-Replayed"
# Long enough for any client's retries of one request; a key is not a permanent record.
KEY_LIFETIME = timedelta(hours=24)


class IdempotencyKey(RecordMixin, Base):
    """One team's key and the response its first successful request got."""

    __tablename__ = "idempotency_keys"
    __table_args__ = (
        UniqueConstraint("team_id", "key"),
        Index("ix_idempotency_keys_created_at", "created_at"),
    )

    team_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(200))
    request_hash: Mapped[str] = mapped_column(String(64))
    status_code: Mapped[int] = mapped_column(Integer)
    response_body: Mapped[dict[str, Any]] = mapped_column(JSON)


def purge_expired_keys(session: Session, *, now: datetime) -> int:
    """Delete every key older than `KEY_LIFETIME`; returns how many."""
    result = session.execute(
        delete(IdempotencyKey).where(IdempotencyKey.created_at < now - KEY_LIFETIME)
    )
    return int(getattr(result, "rowcount", 0) or 0)


def canonical_hash(value: Any) -> str:
    """sha256 of `value` as JSON with sorted keys and no insignificant whitespace."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


async def _fingerprint(request: Request) -> str:
    """The request's canonical form, hashed: method, path, query and JSON body (sorted keys)."""
    raw = await request.body()  # already read (and cached) by FastAPI for the body parameter
    try:
        body = json.loads(raw) if raw else None
    except ValueError:  # FastAPI refuses such bodies before any endpoint runs
        body = raw.decode(errors="replace")
    return canonical_hash(
        {
            "method": request.method,
            "path": request.url.path,
            "query": sorted(request.query_params.multi_items()),
            "body": body,
        }
    )


IdempotencyKeyHeader = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        pattern=r"^[\x21-\x7e]{1,200}$",
        description="1-200 visible ASCII characters; a retry with the same key and request "
        "replays the first response instead of acting again",
    ),
]


class Idempotency:
    """The request's key (None without the header) and fingerprint, for one endpoint call."""

    def __init__(
        self,
        request_hash: Annotated[str, Depends(_fingerprint)],
        key: IdempotencyKeyHeader = None,
    ) -> None:
        self.key = key
        self.request_hash = request_hash

    def replay(self, session: Session, team_id: uuid.UUID) -> JSONResponse | None:
        """The stored response for this key, None if the key is new, expired (or there is
        no key).

        422 if the key was stored for a different request.
        """
        if self.key is None:
            return None
        row = session.scalar(
            select(IdempotencyKey).where(
                IdempotencyKey.team_id == team_id,
                IdempotencyKey.key == self.key,
                IdempotencyKey.created_at >= utcnow() - KEY_LIFETIME,
            )
        )
        if row is None:
            return None
        if row.request_hash != self.request_hash:
            raise Invalid("this Idempotency-Key was already used for a different request")
        return JSONResponse(
            row.response_body, status_code=row.status_code, headers={REPLAYED_HEADER: "true"}
        )

    def record(
        self, session: Session, team_id: uuid.UUID, status_code: int, body: dict[str, Any]
    ) -> None:
        """Store the response in the caller's transaction (flushed: a race fails here or at
        commit with an IntegrityError; roll back and `replay`)."""
        if self.key is None:
            return
        # An expired row the reconciler has not deleted yet still holds (team, key).
        session.execute(
            delete(IdempotencyKey).where(
                IdempotencyKey.team_id == team_id,
                IdempotencyKey.key == self.key,
                IdempotencyKey.created_at < utcnow() - KEY_LIFETIME,
            )
        )
        session.add(
            IdempotencyKey(
                team_id=team_id,
                key=self.key,
                request_hash=self.request_hash,
                status_code=status_code,
                response_body=body,
            )
        )
        session.flush()


IdempotencyDep = Annotated[Idempotency, Depends()]
