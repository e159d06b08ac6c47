"""Crashes leave nothing behind (issue 13, items 10, 11 and 12), with real processes.

A live `shiftaudit serve` on the embedded default (SQLite, local storage, audits in its
spawned runner process, sweeps in that runner's sandboxed child), killed with SIGKILL as the
OOM killer or an operator would; processes are followed by pid and start time in /proc.
Before the fix the runner outlived its server and kept sweeping (and took another job beside
the new server's runner), an upload's scratch survived every restart, and a sandbox killed
from outside failed its audit as "the model crashed", never retried.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from service.audits.runner import job_scratch
from service.audits.tables import AuditReport, AuditShard
from service.db import make_engine, session_factory
from tests.hostile_models import segfaulting_model
from tests.nets import GlobalPoolNet, export_program, noise_probes, zip_directory

from .live import LiveServer, alive, command_line, descendants, start_time, wait_until

# About 15 s of sweeping on two CPU cores (as tests/workers/test_faults.py's): long enough to
# interrupt, short enough to run twice.
SLOW_CONFIG = {
    "preprocess": {"input_size": [16, 16], "resize": 16},
    "sweep": {"mode": "circular", "max_shift": 8},
    "runtime": {"batch_size": 25, "device": "cpu"},
    "bootstrap": 100,
    "layers": {"enabled": False},
}
FAST_RECONCILER = {
    "SHIFTAUDIT_HEARTBEAT_TIMEOUT_S": "4",
    "SHIFTAUDIT_RECONCILE_INTERVAL_S": "1",
    "SHIFTAUDIT_RESEND_AFTER_S": "2",
}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, bytes]:
    root = tmp_path_factory.mktemp("crash-inputs")
    return {
        "slow": export_program(GlobalPoolNet(width=128), root / "slow.pt2").read_bytes(),
        "segfault": segfaulting_model(root).read_bytes(),
        "probes": zip_directory(noise_probes(root / "probes", 48, labels=5)),
    }


class Audits:
    """The API of one live server, as a pipeline uses it, and its database."""

    def __init__(self, server: LiveServer, key: str) -> None:
        self.server = server
        self.headers = {"Authorization": f"Bearer {key}"}

    def submit(self, model: bytes, probes: bytes) -> str:
        with httpx.Client(base_url=self.server.url, headers=self.headers, timeout=60) as http:
            model_id = http.post(
                "/v1/models", data={"name": "m"}, files={"file": ("m", model)}
            ).json()["id"]
            probe_set_id = http.post(
                "/v1/probe-sets", data={"name": "p"}, files={"file": ("p.zip", probes)}
            ).json()["id"]
            created = http.post(
                "/v1/audits",
                params={"reuse": "false"},
                json={"model_id": model_id, "probe_set_id": probe_set_id, "config": SLOW_CONFIG},
            )
        assert created.status_code == 202, created.text
        return str(created.json()["id"])

    def get(self, audit_id: str) -> dict:
        with httpx.Client(base_url=self.server.url, headers=self.headers) as http:
            return http.get(f"/v1/audits/{audit_id}").json()

    def wait(self, audit_id: str, *statuses: str, timeout: float = 240) -> dict:
        wanted = statuses or ("succeeded", "failed", "cancelled")
        deadline = time.monotonic() + timeout
        while (audit := self.get(audit_id))["status"] not in wanted:
            assert time.monotonic() < deadline, f"audit stuck at {audit}:\n{self.server.log()}"
            time.sleep(0.3)
        return audit

    def shards(self, audit_id: str) -> list[AuditShard]:
        engine = make_engine(f"sqlite:///{self.server.data_dir / 'shiftaudit.db'}")
        try:
            with session_factory(engine)() as session:
                return list(
                    session.scalars(
                        select(AuditShard).where(AuditShard.audit_id == uuid.UUID(audit_id))
                    )
                )
        finally:
            engine.dispose()

    def reports(self, audit_id: str) -> int:
        engine = make_engine(f"sqlite:///{self.server.data_dir / 'shiftaudit.db'}")
        try:
            with session_factory(engine)() as session:
                rows = session.scalars(
                    select(AuditReport.audit_id).where(AuditReport.audit_id == uuid.UUID(audit_id))
                )
                return len(rows.all())
        finally:
            engine.dispose()


@pytest.fixture
def served(tmp_path) -> Iterator[tuple[LiveServer, Audits, list[tuple[int, int | None]]]]:
    """A live server, its API, and a list of processes (pid, start time) the test saw below
    it: whatever of those is still alive at the end is killed, so that a failing test leaves
    no sweep computing on the machine."""
    server = LiveServer(tmp_path / "data", **FAST_RECONCILER)
    audits = Audits(server, server.key("crashes", "write"))
    seen: list[tuple[int, int | None]] = []
    server.start()
    try:
        yield server, audits, seen
    finally:
        server.stop()
        for process in seen:
            if alive(process):
                os.kill(process[0], signal.SIGKILL)


def _sandboxes_below(pid: int) -> list[int]:
    """Sandboxes below `pid` that run a sweep (not the one the runner keeps started for its
    next job, which waits in a `warm-` directory of its own)."""
    return [
        p
        for p in descendants(pid)
        if "shiftaudit.sandbox" in command_line(p) and not _waiting_for_a_job(p)
    ]


def _waiting_for_a_job(pid: int) -> bool:
    try:
        return Path(os.readlink(f"/proc/{pid}/cwd")).name.startswith("warm-")
    except OSError:
        return False


def _running_sweep(
    server: LiveServer, audits: Audits, audit_id: str, *, not_these: tuple[int, ...] = ()
) -> int:
    """The pid of the audit's sandboxed sweep (a new one, not in `not_these`), once its
    shard has made progress."""

    def progressing() -> bool:
        (shard,) = audits.shards(audit_id)
        fresh = [p for p in _sandboxes_below(server.pid) if p not in not_these]
        return shard.status.value == "running" and shard.progress >= 0.05 and len(fresh) == 1

    wait_until(progressing, 120, "the sweep to progress")
    (sandbox,) = [p for p in _sandboxes_below(server.pid) if p not in not_these]
    return sandbox


def test_sigkill_of_serve_takes_its_runner_and_sweep_with_it(served, inputs):
    server, audits, seen = served
    audit_id = audits.submit(inputs["slow"], inputs["probes"])
    sandbox = _running_sweep(server, audits, audit_id)
    below = descendants(server.pid)
    seen += [(pid, start_time(pid)) for pid in below]
    runners = [p for p in below if "multiprocessing" in command_line(p) and p != sandbox]
    assert runners, [command_line(p) for p in below]
    server.kill(signal.SIGKILL)
    # Runner, sandbox and the pool's helpers die with the server, within seconds, not when
    # the sweep ends (it had seconds to go).
    wait_until(lambda: not any(alive(process) for process in seen), 10, "the orphans to die")
    assert audits_unfinished(audits, audit_id)
    left = list(job_scratch(server.data_dir / "worker-cache").iterdir())
    assert left  # the killed job's work directory, which the restart removes
    server.start()
    assert not any(p.exists() for p in left)
    audit = audits.wait(audit_id)
    assert audit["status"] == "succeeded", audit
    (shard,) = audits.shards(audit_id)
    assert shard.attempts == 2  # re-run once, by the new server's runner
    assert audits.reports(audit_id) == 1
    assert not any(alive(process) for process in seen)  # no rival came back to life


def audits_unfinished(audits: Audits, audit_id: str) -> bool:
    """Whether the audit is still open in the database (no runner finished it unseen)."""
    (shard,) = audits.shards(audit_id)
    return shard.status.value == "running"


def test_a_sweep_killed_from_outside_is_retried_and_finishes(served, inputs):
    server, audits, seen = served
    audit_id = audits.submit(inputs["slow"], inputs["probes"])
    sandbox = _running_sweep(server, audits, audit_id)
    seen.append((sandbox, start_time(sandbox)))
    os.kill(sandbox, signal.SIGKILL)  # as the OOM killer does
    audit = audits.wait(audit_id)
    assert audit["status"] == "succeeded", audit
    assert audit["error"] is None
    (shard,) = audits.shards(audit_id)
    assert shard.attempts == 2
    assert audits.reports(audit_id) == 1
    assert "killed from outside (SIGKILL)" in server.log()


def test_a_sweep_killed_from_outside_each_attempt_fails_after_max_attempts(tmp_path, inputs):
    server = LiveServer(tmp_path / "data", SHIFTAUDIT_MAX_ATTEMPTS="2", **FAST_RECONCILER)
    audits = Audits(server, server.key("crashes", "write"))
    seen: list[tuple[int, int | None]] = []
    server.start()
    try:
        audit_id = audits.submit(inputs["slow"], inputs["probes"])
        for sig in (signal.SIGTERM, signal.SIGKILL):  # an operator's kill, then the OOM killer
            sandbox = _running_sweep(
                server, audits, audit_id, not_these=tuple(pid for pid, _ in seen)
            )
            seen.append((sandbox, start_time(sandbox)))
            os.kill(sandbox, sig)
            wait_until(lambda s=sandbox: not alive((s, seen[-1][1])), 10, "the sweep to die")
        audit = audits.wait(audit_id)
    finally:
        server.stop()
        for process in seen:
            if alive(process):
                os.kill(process[0], signal.SIGKILL)
    assert audit["status"] == "failed", audit
    assert "killed from outside (SIGKILL)" in audit["error"]
    assert "after 2 attempts" in audit["error"]
    (shard,) = audits.shards(audit_id)
    assert shard.attempts == 2


def test_the_models_own_crash_still_fails_at_once(served, inputs):
    _, audits, _ = served
    audit_id = audits.submit(inputs["segfault"], inputs["probes"])
    audit = audits.wait(audit_id)
    assert audit["status"] == "failed"
    assert "crashed the audit process (SIGSEGV)" in audit["error"]
    (shard,) = audits.shards(audit_id)
    assert shard.attempts == 1
