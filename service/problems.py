"""Errors as RFC 9457 problem details (application/problem+json), for every error path."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from service import errors
from shiftaudit_api.common import PROBLEM_JSON, Problem

# The one place a domain error gets its HTTP status.
STATUS: dict[type[errors.DomainError], int] = {
    errors.NotFound: 404,
    errors.Conflict: 409,
    errors.Invalid: 422,
    errors.TooLarge: 413,
    errors.Unauthenticated: 401,
    errors.Forbidden: 403,
    errors.TooMany: 429,
    errors.Unavailable: 503,
    errors.UpstreamFailed: 502,
}
_PROBLEM_CONTENT = {PROBLEM_JSON: {"schema": Problem.model_json_schema()}}
# Documented on every route, so clients and schema checkers know what errors look like.
PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"description": HTTPStatus(status).phrase, "content": _PROBLEM_CONTENT}
    for status in (400, 401, 403, 404, 409, 413, 415, 422, 429, 500, 503)
}
logger = logging.getLogger(__name__)
# A body with thousands of bad values gets a short answer: the first ones and a count.
MAX_LISTED_ERRORS = 20
# What a 429 asks a client to wait before trying again.
RETRY_AFTER_S = 60


def status_of(error: errors.DomainError) -> int:
    """The HTTP status of a domain error (its nearest listed class)."""
    for kind in type(error).__mro__:
        if kind in STATUS:
            return STATUS[kind]
    return 500


def problem(
    status: int, detail: str, *, headers: Mapping[str, str] | None = None, **extra: Any
) -> JSONResponse:
    """A problem-details response; `type` stays about:blank, `title` is the status phrase."""
    body = {
        "type": "about:blank",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        **extra,
    }
    return JSONResponse(
        body, status_code=status, media_type=PROBLEM_JSON, headers=dict(headers or {})
    )


def install(app: FastAPI) -> None:
    """Route every error the app can raise through `problem`."""

    @app.exception_handler(errors.DomainError)
    async def _domain(_: Request, error: errors.DomainError) -> JSONResponse:
        status = status_of(error)
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        if status == 429:
            headers = {"Retry-After": str(RETRY_AFTER_S)}
        return problem(status, str(error), headers=headers, **error.details)

    @app.exception_handler(HTTPException)
    async def _http(_: Request, error: HTTPException) -> JSONResponse:
        return problem(error.status_code, str(error.detail), headers=error.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, error: RequestValidationError) -> JSONResponse:
        found = error.errors()
        errors_ = [
            {
                "loc": [str(part)[:100] for part in e.get("loc", ())][:10],
                "msg": str(e.get("msg", ""))[:300],
                "type": str(e.get("type", ""))[:100],
            }
            for e in found[:MAX_LISTED_ERRORS]
        ]
        summary = "; ".join(f"{'.'.join(e['loc'])}: {e['msg']}" for e in errors_)
        if len(found) > MAX_LISTED_ERRORS:
            summary += f"; and {len(found) - MAX_LISTED_ERRORS} more"
        return problem(422, summary or "invalid request", errors=errors_, error_count=len(found))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, error: Exception) -> JSONResponse:
        logger.exception("unhandled error", exc_info=error)
        return problem(500, "internal error; the server logged the details")
