"""The queue boundary: where committed audit shards are handed to something that runs them.

One small interface, two implementations: the embedded runner below (a process pool on this
machine, the zero-configuration default) and Celery over Redis (the `workers` package
consumes what CeleryQueue sends).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import threading
import time
import uuid
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Protocol

from service.audits.runner import JobOptions, job_options, prepare_sandbox, run_shard
from service.routing import RUN_SHARD_TASK, job_id
from service.settings import Settings

SERVER_WATCH_S = 0.25  # how soon a runner notices that its server is gone


class AuditQueue(Protocol):
    def enqueue(self, audit_id: uuid.UUID, shard: int, *, route: str) -> None:
        """Hand over a shard whose `queued` row is already committed, for queue `route`."""

    def waiting(self) -> set[str] | None:
        """Job ids waiting in the queue now; None when the queue cannot tell."""

    def ping(self) -> None:
        """Raise when jobs could not be handed over now (for /readyz)."""

    def close(self) -> None:
        """Stop accepting work and release resources."""


class CeleryQueue:
    """Sends committed shards to Celery workers over Redis; the API runs none itself."""

    def __init__(self, redis_url: str) -> None:
        from celery import Celery

        self.app = Celery("shiftaudit-api", broker=redis_url)
        self.app.conf.broker_connection_retry_on_startup = True
        self.redis_url = redis_url

    def enqueue(self, audit_id: uuid.UUID, shard: int, *, route: str) -> None:
        self.app.send_task(
            RUN_SHARD_TASK,
            args=[str(audit_id), shard],
            queue=route,
            task_id=job_id(audit_id, shard),
        )

    def waiting(self) -> set[str]:
        """Ids of the messages in the audit queues' Redis lists: every queue named audits.*,
        GPU types included (kombu keeps one list per queue, plus one per priority step, named
        queue + '\\x06\\x16' + step)."""
        import redis

        found: set[str] = set()
        with redis.Redis.from_url(self.redis_url) as client:
            for key in client.scan_iter(match="audits.*", _type="list"):
                for raw in client.lrange(key, 0, -1):
                    found.add(json.loads(raw)["headers"]["id"])
        return found

    def ping(self) -> None:
        """Raise when the broker cannot be reached (for /readyz)."""
        with self.app.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=2)

    def close(self) -> None:
        self.app.close()


def queue_from_settings(settings: Settings) -> AuditQueue:
    """Celery when REDIS_URL is set, else the embedded runner."""
    if settings.redis_url:
        return CeleryQueue(settings.redis_url)
    return EmbeddedQueue(settings)


class EmbeddedQueue:
    """Runs shards one at a time in a spawned child process, never in the API process.

    Spawn, not fork: the API process may hold threads and database connections that a fork
    would copy, and CUDA must not be initialised before a fork. That child starts the
    sandboxed sweep, as a Celery worker does, and dies with the API process (a runner left
    behind would go on sweeping, and take jobs beside the next server's runner).
    """

    def __init__(self, settings: Settings, *, workers: int = 1) -> None:
        self._urls = (settings.resolved_database_url, settings.resolved_storage_url)
        self._options = job_options(settings)
        self._pool = ProcessPoolExecutor(
            max_workers=workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=start_runner,
            initargs=(os.getpid(), self._options),
        )
        self._pending: dict[str, Future[str]] = {}

    def enqueue(self, audit_id: uuid.UUID, shard: int, *, route: str) -> None:
        key = job_id(audit_id, shard)
        self._pending[key] = self._pool.submit(
            run_shard, str(audit_id), shard, *self._urls, self._options
        )

    def waiting(self) -> set[str]:
        self._pending = {k: f for k, f in self._pending.items() if not f.done()}
        return set(self._pending)

    def ping(self) -> None:
        """The pool lives in this process: nothing to reach."""

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def start_runner(server: int, options: JobOptions) -> None:
    """A runner process's start: tied to its server, its sandbox fork server started (from this
    main thread, which runs the jobs)."""
    die_with_server(server)
    prepare_sandbox(options)


def die_with_server(server: int) -> None:
    """In a runner process: exit as soon as the server that started it is gone.

    Not PR_SET_PDEATHSIG: the kernel ties that to the thread that created the child, and the
    pool starts its processes from whichever thread first submits (a request's worker
    thread, which the thread pool retires when idle). A watch on the parent pid holds
    however the server ends, SIGKILL included; the sandboxed sweep dies with this process
    (it has PR_SET_PDEATHSIG on this process's main thread, which runs the job).
    """
    if os.getppid() != server:  # gone before this process got here
        os._exit(1)
    threading.Thread(target=_watch_server, args=(server,), daemon=True, name="server-watch").start()


def _watch_server(server: int) -> None:
    while os.getppid() == server:
        time.sleep(SERVER_WATCH_S)
    os._exit(1)  # no cleanup to wait for: the database is the truth, the reconciler re-runs
