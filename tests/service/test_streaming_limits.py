"""A body that never ends, against a real server: refused at the limit, not read to the end."""

from __future__ import annotations

import os
import select
import socket
import subprocess
import sys

import httpx

from service.db import make_engine, session_factory
from service.demo import wait_ready
from service.migrate import upgrade
from service.teams.repository import create_key, get_or_create_team
from service.teams.tables import Scope

from .conftest import PEPPER
from .loopback import free_port

LIMIT = 1 << 20
CAP = 64 << 20  # the test stops feeding here: the server must answer well before


def test_an_endless_upload_is_cut_off_at_the_limit(tmp_path):
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    upgrade(url)
    engine = make_engine(url)
    with session_factory(engine).begin() as session:
        _, key = create_key(
            session, team=get_or_create_team(session, name="t"), scope=Scope.WRITE, pepper=PEPPER
        )
    engine.dispose()
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "SHIFTAUDIT_SECRET_KEY": PEPPER,
        "SHIFTAUDIT_DATA_DIR": str(tmp_path / "data"),
        "SHIFTAUDIT_MAX_MODEL_BYTES": str(LIMIT),
    }
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            "service.app:create_app",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        env=env,
    )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as http:
            wait_ready(http, server)
        status, sent = _endless_upload(port, key)
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert status == 413
    assert sent < 16 * LIMIT, f"the server read {sent} bytes before refusing"
    objects = tmp_path / "data" / "artifacts"
    assert [p for p in objects.rglob("*") if p.is_file()] == []


def _endless_upload(port: int, key: str) -> tuple[int, int]:
    """Stream a chunked multipart body until the server answers; (status, bytes sent)."""
    boundary = "endless"
    head = (
        f"POST /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    ).encode()
    preamble = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="name"\r\n\r\nx\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="m"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    chunk = b"\0" * 65536
    framed = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=30) as connection:
        connection.sendall(head + f"{len(preamble):x}\r\n".encode() + preamble + b"\r\n")
        while sent < CAP:
            readable, _, _ = select.select([connection], [], [], 0)
            if readable:
                break
            try:
                connection.sendall(framed)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(chunk)
        connection.settimeout(30)
        response = connection.recv(65536)
    return int(response.split(b" ", 2)[1]), sent
