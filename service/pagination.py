"""Keyset pagination over (created_at, id), newest first: stable under inserts, no counts."""

from __future__ import annotations

import base64
import uuid
from datetime import datetime
from typing import TypeVar

from fastapi import Request
from pydantic import BaseModel
from sqlalchemy import Select, and_, or_

from service.db import RecordMixin
from service.errors import Invalid
from shiftaudit_api.common import Page

KeyedT = TypeVar("KeyedT", bound=RecordMixin)
SchemaT = TypeVar("SchemaT", bound=BaseModel)


def encode_cursor(created_at: datetime, row_id: uuid.UUID) -> str:
    raw = f"{created_at.isoformat()}|{row_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created, _, row_id = raw.partition("|")
        return datetime.fromisoformat(created), uuid.UUID(row_id)
    except ValueError as error:
        raise Invalid("cursor: not a cursor this API issued") from error


def newest_first(
    query: Select[KeyedT],
    table: type[KeyedT],
    *,
    after: tuple[datetime, uuid.UUID] | None,
    limit: int,
    oldest_first: bool = False,
) -> Select[KeyedT]:
    """`query` ordered by (created_at, id), newest first unless asked, after the cursor."""
    if after is not None:
        created, row_id = after
        if oldest_first:
            beyond = or_(
                table.created_at > created, and_(table.created_at == created, table.id > row_id)
            )
        else:
            beyond = or_(
                table.created_at < created, and_(table.created_at == created, table.id < row_id)
            )
        query = query.where(beyond)
    if oldest_first:
        return query.order_by(table.created_at.asc(), table.id.asc()).limit(limit)
    return query.order_by(table.created_at.desc(), table.id.desc()).limit(limit)


def next_page_link(request: Request, **after: str) -> dict[str, str]:
    """A `Link: <...>; rel="next"` header (RFC 8288) for a list answered as a JSON array:
    the same query with the keyset parameter moved past the last item."""
    url = request.url.include_query_params(**after)
    return {"Link": f'<{url.path}?{url.query}>; rel="next"'}


def page_of(rows: list[KeyedT], *, limit: int, schema: type[SchemaT]) -> Page[SchemaT]:
    """A response page from `limit + 1` fetched rows (the extra one says there is more)."""
    last = rows[limit - 1] if len(rows) > limit else None
    items = [schema.model_validate(r, from_attributes=True) for r in rows[:limit]]
    cursor = encode_cursor(last.created_at, last.id) if last else None
    return Page(items=items, next_cursor=cursor)
