"""Scratch space after a crash (issue 13, item 11), with real processes.

Before the fix an upload's scratch was an anonymous temporary directory (and local storage's
spool an anonymous file) that a server killed with SIGKILL left behind for good: a zip bomb
left 1.8 GB. Now scratch is per request and named after its process, and `serve` and
`worker` remove dead processes' scratch when they start.
"""

from __future__ import annotations

import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.audits.runner import job_scratch
from service.scratch import owner, process_directory
from tests.service.test_storage import BUCKET, REGION, s3_endpoint  # noqa: F401 (fixture)
from tests.workers.conftest import broker, database, deploy  # noqa: F401 (fixtures)

from .live import LiveServer, wait_until


@pytest.fixture(params=["local", "s3"])
def server(request, tmp_path) -> Iterator[LiveServer]:
    settings = {}
    if request.param == "s3":  # the model spools before it goes to S3: in the data directory
        endpoint = request.getfixturevalue("s3_endpoint")
        settings = {
            "SHIFTAUDIT_STORAGE_URL": f"s3://{BUCKET}/scratch-{uuid.uuid4().hex[:8]}/"
            f"?endpoint_url={endpoint}&region={REGION}",
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "NO_PROXY": "127.0.0.1,localhost",
        }
    live = LiveServer(tmp_path / "data", **settings)
    live.writer = live.key("scratch", "write")
    live.start()
    yield live
    live.stop()


def _scratch_files(data_dir: Path) -> set[Path]:
    roots = [data_dir / "tmp", data_dir / "artifacts" / "tmp"]
    return {p for root in roots if root.exists() for p in root.rglob("*") if p.is_file()}


def test_a_server_killed_mid_upload_leaves_no_scratch_after_a_restart(server):
    boundary = "residue"
    sockets = []
    for path, filename in (("/v1/probe-sets", "big.zip"), ("/v1/models", "big.onnx")):
        connection = server.connect()
        connection.sendall(
            (
                f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"Authorization: Bearer {server.writer}\r\n"
                f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
                "Content-Length: 1000000000\r\n\r\n"
                f'--{boundary}\r\nContent-Disposition: form-data; name="name"\r\n\r\nx\r\n'
                f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
                f'filename="{filename}"\r\nContent-Type: application/octet-stream\r\n\r\n'
            ).encode()
            + b"PK\x03\x04"
            + b"\1" * (8 << 20)
        )
        sockets.append(connection)
    # Both uploads are being written to scratch: the probe set's parts in a directory of its
    # request, the model into the storage's spool.
    wait_until(
        lambda: sum(p.stat().st_size for p in _scratch_files(server.data_dir)) >= 12 << 20,
        30,
        "the uploads to reach the scratch space",
    )
    residue = _scratch_files(server.data_dir)
    requests = [p.name for p in (server.data_dir / "tmp").iterdir() if p.is_dir()]
    killed = server.pid
    server.kill(signal.SIGKILL)
    for connection in sockets:
        connection.close()
    assert all(p.exists() for p in residue)  # what the dead server left
    server.start()
    assert not any(p.exists() for p in residue), sorted(map(str, residue))
    assert _scratch_files(server.data_dir) == set()
    assert "removed what stopped processes left" in server.log()
    # Scratch is per request and names its process, which is how the restart found it.
    assert len(requests) == 1, requests  # one directory for the one upload that needs one
    assert requests[0].startswith("request-"), requests
    assert f".{killed}." in requests[0], requests


def test_a_worker_removes_what_its_dead_jobs_left_on_start(deploy):  # noqa: F811
    """`shiftaudit worker` cleans its jobs' scratch: a dead process's, an older version's,
    never a live process's."""
    deployment = deploy()
    scratch = job_scratch(deployment.root / "cache-w1")
    host = owner().split(".", 1)[0]
    dead = scratch / f"job-{host}.4194305.1-left"  # a pid above any pid_max: never alive
    legacy = scratch / "shiftaudit-job-abc123"
    for directory in (dead, legacy):
        (directory / "sweep").mkdir(parents=True)
        (directory / "sweep" / "result.json").write_bytes(b"\0" * 4096)
    live = process_directory(scratch, "job")  # this test's own process: alive
    (live / "x").write_bytes(b"kept")
    deployment.start_worker("w1")
    assert not dead.exists()
    assert not legacy.exists()
    assert (live / "x").read_bytes() == b"kept"
    assert "removed what stopped processes left: 2 job directories" in deployment.log("w1")
