"""The queue boundary: where committed audits are handed to something that runs them.

One small interface, two implementations: the embedded runner below (a process pool on this
machine, the zero-configuration default) and Celery over Redis (the workers issue).
"""

from __future__ import annotations

import multiprocessing
import uuid
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Protocol

from service.audits.runner import run_job
from service.settings import Settings


class AuditQueue(Protocol):
    def enqueue(self, audit_id: uuid.UUID) -> None:
        """Hand over an audit whose `queued` row is already committed."""

    def ping(self) -> None:
        """Raise when audits could not be handed over now (for /readyz)."""

    def close(self) -> None:
        """Stop accepting work and release resources."""


# The contract with the workers: this task name, one argument (the audit id as a string).
RUN_AUDIT_TASK = "shiftaudit.run_audit"
AUDIT_QUEUE = "audits"


class CeleryQueue:
    """Sends committed audits to Celery workers over Redis; the API runs none itself.

    Only the producer side lives here: the workers (the `workers/` package) consume
    RUN_AUDIT_TASK from AUDIT_QUEUE and call `service.audits.runner.run_job`.
    """

    def __init__(self, redis_url: str) -> None:
        from celery import Celery

        self.app = Celery("shiftaudit-api", broker=redis_url)
        self.app.conf.broker_connection_retry_on_startup = True
        self.redis_url = redis_url

    def enqueue(self, audit_id: uuid.UUID) -> None:
        self.app.send_task(RUN_AUDIT_TASK, args=[str(audit_id)], queue=AUDIT_QUEUE)

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
    """Runs audits one at a time in a spawned child process, never in the API process.

    Spawn, not fork: the API process may hold threads and database connections that a fork
    would copy, and CUDA must not be initialised before a fork.
    """

    def __init__(self, settings: Settings, *, workers: int = 1) -> None:
        self._urls = (settings.resolved_database_url, settings.resolved_storage_url)
        self._pool = ProcessPoolExecutor(
            max_workers=workers, mp_context=multiprocessing.get_context("spawn")
        )
        self.submitted: list[Future[str]] = []

    def enqueue(self, audit_id: uuid.UUID) -> None:
        self.submitted.append(self._pool.submit(run_job, str(audit_id), *self._urls))

    def ping(self) -> None:
        """The pool lives in this process: nothing to reach."""

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
