"""Request bodies against a live `shiftaudit serve` over raw sockets (issue 13, items 6 and 9,
and HEAD on the probes).

Before the fix a 512 MB JSON body without a key was read in full before the 401, a JSON
body had no size limit, and an endless chunked upload refused with 413 kept being read by
the server for as long as the client sent it.
"""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from .live import LiveServer

MODEL_LIMIT = 1 << 20
JSON_CAP = 1 << 20  # the default of SHIFTAUDIT_MAX_JSON_BODY_BYTES
# What the kernel's socket buffers may swallow on loopback before the server reads a byte:
# sending less than this proves nothing was read.
BUFFERED = 16 << 20
GIVE_UP = 96 << 20  # the client stops feeding here: the server must have answered before
CHUNK = b"a" * 65536


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[LiveServer]:
    live = LiveServer(
        tmp_path_factory.mktemp("bodies"), SHIFTAUDIT_MAX_MODEL_BYTES=str(MODEL_LIMIT)
    )
    live.writer = live.key("bodies", "write")
    live.start()
    yield live
    live.stop()


def _head(path: str, *, key: str | None, content_type: str, length: int | None = None) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Type: {content_type}"]
    if key is not None:
        lines.append(f"Authorization: Bearer {key}")
    lines.append("Transfer-Encoding: chunked" if length is None else f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _chunked(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def _feed_until_answered(
    connection: socket.socket, first: bytes, piece: bytes, *, give_up: int = GIVE_UP
) -> tuple[int, bytes]:
    """Send `first`, then `piece` again and again until the server answers (or `give_up`
    bytes went out); (body bytes sent, the answer's first bytes)."""
    connection.sendall(first)
    sent = 0
    while sent < give_up:
        if select.select([connection], [], [], 0)[0]:
            break
        try:
            connection.sendall(piece)
        except (BrokenPipeError, ConnectionResetError):
            break
        sent += len(piece)
    readable, _, _ = select.select([connection], [], [], 10)
    assert readable, f"no answer after {sent} body bytes: the server is still reading"
    return sent, _read_answer(connection)


def _read_answer(connection: socket.socket) -> bytes:
    """One whole answer: the head, and the body its Content-Length announces."""
    answer = b""
    connection.settimeout(10)
    while b"\r\n\r\n" not in answer:
        piece = connection.recv(65536)
        assert piece, f"the connection closed inside the answer's head: {answer!r}"
        answer += piece
    head, _, body = answer.partition(b"\r\n\r\n")
    length = next(
        (
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        ),
        0,
    )
    while len(body) < length:
        piece = connection.recv(65536)
        assert piece, "the connection closed inside the answer's body"
        body += piece
    return head + b"\r\n\r\n" + body


def _status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def _closed_by_server_within(connection: socket.socket, piece: bytes, seconds: float) -> bool:
    """Keep sending after the answer; True once the server closed the connection."""
    deadline = time.monotonic() + seconds
    connection.settimeout(0.5)
    while time.monotonic() < deadline:
        try:
            if select.select([connection], [], [], 0)[0] and connection.recv(65536) == b"":
                return True
            connection.sendall(piece)
        except (BrokenPipeError, ConnectionResetError):
            return True
        except TimeoutError:
            continue  # the send buffer is full: the server is not reading, which is the point
    return False


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("/v1/audits", "application/json"),
        ("/v1/policies", "application/json"),
        ("/v1/audits", "multipart/form-data; boundary=x"),  # a JSON route, whatever it says
        ("/v1/models", "multipart/form-data; boundary=x"),  # uploads held before; still must
    ],
)
def test_a_huge_body_without_a_key_is_refused_before_it_is_read(server, path, content_type):
    length = 512 << 20
    with server.connect() as connection:
        head = _head(path, key=None, content_type=content_type, length=length)
        sent, answer = _feed_until_answered(connection, head, CHUNK)
        assert _status(answer) == 401, answer[:300]
        assert b"an API key is required" in answer
        assert sent < BUFFERED, f"{sent} bytes were read before the 401"
        assert b"connection: close" in answer.lower()
        assert _closed_by_server_within(connection, CHUNK, 5)


def test_a_chunked_body_without_a_key_is_refused_before_it_is_read(server):
    with server.connect() as connection:
        head = _head("/v1/audits", key=None, content_type="application/json")
        sent, answer = _feed_until_answered(connection, head, _chunked(CHUNK))
        assert _status(answer) == 401, answer[:300]
        assert sent < BUFFERED, f"{sent} bytes were read before the 401"


def test_a_json_body_is_cut_at_the_cap_while_it_streams(server):
    with server.connect() as connection:
        head = _head("/v1/audits", key=server.writer, content_type="application/json")
        first = head + _chunked(b'{"model_id": "')
        sent, answer = _feed_until_answered(connection, first, _chunked(CHUNK))
        assert _status(answer) == 413, answer[:300]
        assert f"larger than the {JSON_CAP}-byte limit".encode() in answer
        assert sent < BUFFERED + JSON_CAP, f"{sent} bytes were read before the 413"
        assert _closed_by_server_within(connection, _chunked(CHUNK), 5)


def test_a_declared_json_body_over_the_cap_is_refused_before_it_is_sent(server):
    with server.connect() as connection:
        head = _head(
            "/v1/audits", key=server.writer, content_type="application/json", length=JSON_CAP + 1
        )
        sent, answer = _feed_until_answered(connection, head, b"", give_up=0)
        assert _status(answer) == 413, answer[:300]
        assert sent == 0


def test_an_endless_upload_is_refused_and_its_connection_closed(server):
    boundary = "endless"
    preamble = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="name"\r\n\r\nx\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="m"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    with server.connect() as connection:
        head = _head(
            "/v1/models",
            key=server.writer,
            content_type=f"multipart/form-data; boundary={boundary}",
        )
        piece = _chunked(b"\0" * 65536)
        sent, answer = _feed_until_answered(connection, head + _chunked(preamble), piece)
        assert _status(answer) == 413, answer[:300]
        assert sent < BUFFERED + MODEL_LIMIT
        # The answer is sent; the server must stop reading and close, not drain forever.
        assert _closed_by_server_within(connection, piece, 5), "the server kept reading"
    with httpx.Client(base_url=server.url) as http:
        assert http.get("/healthz").status_code == 200  # and it serves the next caller


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
def test_head_on_the_probes_answers_200(server, path):
    with httpx.Client(base_url=server.url) as http:
        head = http.head(path)
        assert head.status_code == 200, head.text
        assert head.content == b""
        assert http.get(path).status_code == 200


def test_every_api_route_is_guarded(tmp_path):
    """A router added without GuardedRoute would read bodies before the key again."""
    from fastapi.routing import APIRoute, iter_route_contexts

    from service.app import create_app
    from service.guard import GuardedRoute
    from service.settings import Settings
    from tests.service.conftest import RecordingQueue

    settings = Settings(database_url=f"sqlite:///{tmp_path / 'x.db'}", data_dir=tmp_path)
    app = create_app(settings, queue=RecordingQueue())
    try:
        routes = [
            context
            for context in iter_route_contexts(app.routes)
            if isinstance(context.original_route, APIRoute) and context.path.startswith("/v1")
        ]
    finally:
        app.state.engine.dispose()
    assert len(routes) > 30
    unguarded = [c.path for c in routes if not isinstance(c.original_route, GuardedRoute)]
    assert unguarded == []
