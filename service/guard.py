"""What happens to a request before its endpoint reads the body.

FastAPI reads (and parses) a route's JSON body before it resolves any dependency, the API key
included, so a 512 MB body without a key was read in full before the 401. Every route of the
API is a `GuardedRoute` instead: a route that needs a key authenticates the caller first,
from the headers alone; then a body the endpoint does not stream itself (the multipart
uploads do, with their own limits) is read with a cap (`max_json_body_bytes`), refused with
413 as soon as it passes it. `CloseUnreadBodies` makes an answer sent before the body was
read to its end close the connection, so the server stops reading it.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.deps import authenticate_request, get_principal
from service.errors import TooLarge
from service.uploads import streams_own_body


class GuardedRoute(APIRoute):
    """A route that authenticates before reading a body, and caps bodies it does not stream."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        needs_key = _calls(self.dependant, get_principal)
        capped = not _calls(self.dependant, streams_own_body)

        async def guarded(request: Request) -> Response:
            if needs_key:
                await run_in_threadpool(authenticate_request, request)
            if capped and _declares_body(request.scope):
                limit: int = request.app.state.settings.max_json_body_bytes
                body = await read_capped(request, limit=limit)
                request = Request(request.scope, _replay(body, request.receive))
            return await handler(request)

        return guarded


def _calls(dependant: Dependant, target: Callable[..., Any]) -> bool:
    """Whether `target` is among the dependencies the route resolves, at any depth."""
    return dependant.call is target or any(_calls(d, target) for d in dependant.dependencies)


def _declares_body(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"transfer-encoding" or (name == b"content-length" and value != b"0"):
            return True
    return False


async def read_capped(request: Request, *, limit: int, what: str = "the request body") -> bytes:
    """The whole body, or TooLarge as soon as it passes `limit` (the rest is never read)."""
    too_large = TooLarge(f"{what} is larger than the {limit}-byte limit")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_large
    return bytes(body)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive channel that gives the endpoint the body already read, then the client's
    own messages (a disconnect)."""
    given = False

    async def replay() -> Message:
        nonlocal given
        if not given:
            given = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


class CloseUnreadBodies:
    """Pure ASGI: an answer that starts before the request's body was received to its end
    carries `Connection: close`. The server then closes the connection once the answer is
    out, instead of reading (and discarding) the rest of the body to keep it alive, which
    for an endless upload is forever."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _declares_body(scope):
            await self.app(scope, receive, send)
            return
        received_all = False

        async def tracking_receive() -> Message:
            nonlocal received_all
            message = await receive()
            if message["type"] == "http.request" and not message.get("more_body", False):
                received_all = True
            return message

        async def closing_send(message: Message) -> None:
            if message["type"] == "http.response.start" and not received_all:
                headers = [
                    (name, value)
                    for name, value in message.get("headers", [])
                    if name.lower() != b"connection"
                ]
                message = {**message, "headers": [*headers, (b"connection", b"close")]}
            await send(message)

        await self.app(scope, tracking_receive, closing_send)
