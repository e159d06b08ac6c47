"""A whole Celery deployment per test, from real parts.

A private redis-server (so a test may restart it), a fresh PostgreSQL database migrated to
head, local artifact storage, the API in-process (it only produces messages), and worker and
reconciler processes started with `shiftaudit worker` / `shiftaudit reconciler`, exactly as
an operator would. Everything is stopped and dropped afterwards.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import select

from service.app import create_app
from service.audits.tables import Audit, AuditReport, AuditShard
from service.migrate import upgrade
from service.queue import CeleryQueue
from service.settings import Settings
from service.teams.repository import create_key, get_or_create_team
from service.teams.tables import Scope
from tests.nets import zip_directory
from tests.postgres import fresh_database
from tests.service.loopback import free_port

SHIFTAUDIT = Path(sys.executable).with_name("shiftaudit")
CELERY = Path(sys.executable).with_name("celery")
PEPPER = "w" * 40
CONFIG: dict[str, Any] = {
    "preprocess": {"input_size": [16, 16], "resize": 16},
    "sweep": {"mode": "circular", "max_shift": 2},
    "runtime": {"batch_size": 25, "device": "cpu"},
    "bootstrap": 100,
}


def wait_for_log(
    process: subprocess.Popen[bytes], log: Path, text: str, *, timeout: float = 60
) -> None:
    """Return once `text` is in the log of `process`; fail if it exits or time runs out."""
    deadline = time.monotonic() + timeout
    while text not in log.read_text(errors="replace"):
        if process.poll() is not None:
            raise AssertionError(f"{log.stem} exited:\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{log.stem} never logged {text!r}:\n{log.read_text()[-3000:]}")
        time.sleep(0.1)


class RedisServer:
    """A redis-server of our own that keeps nothing on disk, like the machines' one."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.directory = directory
        self.process: subprocess.Popen[bytes] | None = None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
            ],
            stdout=subprocess.DEVNULL,
        )
        client = redis.Redis.from_url(self.url)
        for _ in range(100):
            try:
                client.ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def restart(self) -> None:
        """Kill and start again: every queued message is gone, as after a real restart."""
        self.stop()
        self.start()


class Deployment:
    """The API (in-process), the database and the processes of one test."""

    def __init__(self, root: Path, database_url: str, broker: RedisServer, **settings: Any):
        root.mkdir(parents=True)
        self.root = root
        self.broker = broker
        self.database_url = database_url
        self.settings = Settings(
            database_url=database_url,
            redis_url=broker.url,
            storage_url=str(root / "artifacts"),
            data_dir=root / "data",
            secret_key=PEPPER,
            **settings,
        )
        self.app = create_app(self.settings, CeleryQueue(broker.url))
        self.client = TestClient(self.app)
        self.sessions = self.app.state.sessions
        with self.sessions.begin() as session:
            team = get_or_create_team(session, name="alpha")
            _, key = create_key(session, team=team, scope=Scope.WRITE, pepper=PEPPER)
        self.headers = {"Authorization": f"Bearer {key}"}
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    # ------------------------------------------------------------------ processes

    def environment(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SHIFTAUDIT_")}
        env |= {
            "SHIFTAUDIT_DATABASE_URL": self.database_url,
            "SHIFTAUDIT_REDIS_URL": self.broker.url,
            "SHIFTAUDIT_STORAGE_URL": self.settings.resolved_storage_url,
            "SHIFTAUDIT_DATA_DIR": str(self.root / "data"),
            "SHIFTAUDIT_HEARTBEAT_TIMEOUT_S": "4",
            "SHIFTAUDIT_RECONCILE_INTERVAL_S": "1",
            "SHIFTAUDIT_RESEND_AFTER_S": "2",
            "SHIFTAUDIT_AUDIT_MEMORY_LIMIT_MB": "4096",
            "SHIFTAUDIT_SECRET_KEY": PEPPER,
        }
        return env | extra

    def start(self, name: str, argv: list[str], *, ready: str | None, **env: str) -> None:
        """Run a command with the deployment's environment, its output in NAME.log."""
        log = (self.root / f"{name}.log").open("wb")
        self.processes[name] = subprocess.Popen(
            argv,
            env=self.environment(**env),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        if ready is not None:
            self.wait_for_log(name, ready)

    def start_worker(self, name: str, device: str = "cpu", *args: str, **env: str) -> None:
        cache = str(self.root / f"cache-{name}")
        self.start(
            name,
            [str(SHIFTAUDIT), "worker", f"--device={device}", f"--name={name}@test", *args],
            ready="ready.",
            SHIFTAUDIT_WORKER_CACHE_DIR=cache,
            **env,
        )

    def start_reconciler(self) -> None:
        self.start("reconciler", [str(SHIFTAUDIT), "reconciler"], ready=None)

    def log(self, name: str) -> str:
        return (self.root / f"{name}.log").read_text(errors="replace")

    def wait_for_log(self, name: str, text: str, timeout: float = 60) -> None:
        wait_for_log(self.processes[name], self.root / f"{name}.log", text, timeout=timeout)

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        process = self.processes.pop(name)
        process.send_signal(sig)
        process.wait(timeout=30)

    def stop_all(self) -> None:
        for name in list(self.processes):
            process = self.processes.pop(name)
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    # ------------------------------------------------------------------ the API

    def upload(self, model: Path, probes_zip: Path) -> tuple[str, str]:
        model_id = self.client.post(
            "/v1/models",
            headers=self.headers,
            data={"name": model.stem},
            files={"file": (model.name, model.read_bytes())},
        ).json()["id"]
        probe_set_id = self.client.post(
            "/v1/probe-sets",
            headers=self.headers,
            data={"name": probes_zip.stem},
            files={"file": (probes_zip.name, probes_zip.read_bytes())},
        ).json()["id"]
        return model_id, probe_set_id

    def submit(self, model_id: str, probe_set_id: str, config: dict[str, Any] = CONFIG) -> str:
        response = self.client.post(
            "/v1/audits",
            headers=self.headers,
            params={"reuse": "false"},
            json={"model_id": model_id, "probe_set_id": probe_set_id, "config": config},
        )
        assert response.status_code == 202, response.text
        return str(response.json()["id"])

    def audit(self, audit_id: str) -> dict[str, Any]:
        response = self.client.get(f"/v1/audits/{audit_id}", headers=self.headers)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def report(self, audit_id: str) -> dict[str, Any]:
        response = self.client.get(f"/v1/audits/{audit_id}/report", headers=self.headers)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def wait(self, audit_id: str, *statuses: str, timeout: float = 120) -> dict[str, Any]:
        """Poll the API until the audit is in one of `statuses`."""
        wanted = statuses or ("succeeded", "failed", "cancelled")
        deadline = time.monotonic() + timeout
        while (audit := self.audit(audit_id))["status"] not in wanted:
            if time.monotonic() > deadline:
                logs = {name: self.log(name)[-2000:] for name in self.processes}
                raise AssertionError(f"audit stuck at {audit}; logs: {logs}")
            time.sleep(0.2)
        return audit

    # ------------------------------------------------------------------ the database

    def shards(self, audit_id: str) -> list[AuditShard]:
        with self.sessions() as session:
            return list(
                session.scalars(
                    select(AuditShard)
                    .where(AuditShard.audit_id == uuid.UUID(audit_id))
                    .order_by(AuditShard.shard)
                )
            )

    def report_count(self, audit_id: str) -> int:
        with self.sessions() as session:
            rows = session.scalars(
                select(AuditReport.audit_id).where(AuditReport.audit_id == uuid.UUID(audit_id))
            )
            return len(rows.all())

    def statuses(self) -> dict[str, str]:
        with self.sessions() as session:
            return {str(a.id): a.status.value for a in session.scalars(select(Audit))}

    def close(self) -> None:
        self.stop_all()
        self.client.close()
        self.app.state.queue.close()
        self.app.state.engine.dispose()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def database() -> Iterator[str]:
    with fresh_database("shiftaudit_workers") as url:
        upgrade(url)
        yield url


@pytest.fixture
def deploy(tmp_path: Path, database: str, broker: RedisServer) -> Iterator[Any]:
    """deploy(**settings) -> Deployment; every deployment is torn down after the test."""
    made: list[Deployment] = []

    def make(**settings: Any) -> Deployment:
        deployment = Deployment(tmp_path / f"d{len(made)}", database, broker, **settings)
        made.append(deployment)
        return deployment

    yield make
    for deployment in made:
        deployment.close()


def zip_probes(directory: Path) -> Path:
    """The probe images of `directory` as a zip beside it."""
    target = directory.with_suffix(".zip")
    target.write_bytes(zip_directory(directory))
    return target
