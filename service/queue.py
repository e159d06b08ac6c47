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

    def close(self) -> None:
        """Stop accepting work and release resources."""


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

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
