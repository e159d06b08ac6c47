"""The Celery application of the workers: `celery -A workers.app worker` or `shiftaudit worker`.

Delivery: a message is acknowledged only after its shard finished (late ack), one message at
a time per worker (prefetch 1), and given back if the worker process dies (reject on worker
lost). Redis would redeliver an unacknowledged message after the visibility timeout, so that
is set beyond the longest a healthy shard may run (the wall-time limit); a worker that dies
is noticed sooner, by its stale heartbeat (`workers.reconciler`). The database decides what
runs: a redelivered message whose shard is taken or finished does nothing.
"""

from __future__ import annotations

import os
from dataclasses import replace
from functools import cache

from celery import Celery, Task
from celery.signals import worker_ready
from sqlalchemy.exc import OperationalError

from service.audits.runner import job_options, prepare_sandbox, run_shard
from service.routing import RUN_SHARD_TASK
from service.settings import Settings, get_settings


def create_celery(
    settings: Settings, *, worker_name: str | None = None, threads: int | None = None
) -> Celery:
    """A Celery app on the settings' Redis, with the delivery guarantees above."""
    if not settings.redis_url:
        raise SystemExit("REDIS_URL must be set for a worker (redis://host:6379/0)")
    app = Celery("shiftaudit", broker=settings.redis_url)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_transport_options={"visibility_timeout": int(settings.audit_time_limit_s) + 3600},
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,  # a restarting Redis is waited for, not fatal
        task_ignore_result=True,  # results live in the database
    )
    options = job_options(settings, threads=threads)
    if worker_name is not None:
        options = replace(options, worker=f"{worker_name}:{os.getpid()}")
    urls = (settings.resolved_database_url, settings.resolved_storage_url)

    # The sandbox's fork server is started, and imports the engine, while the worker waits
    # for its first job. worker_ready is sent from the main thread, which runs the solo pool's
    # jobs and so outlives the fork server (it dies with the thread that started it, and each
    # job's process with it).
    @worker_ready.connect(weak=False)  # type: ignore[untyped-decorator]
    def start_sandbox(**_: object) -> None:
        prepare_sandbox(options)

    @app.task(  # type: ignore[untyped-decorator]
        name=RUN_SHARD_TASK,
        bind=True,
        # Only a shard that could not be claimed raises (the database was unreachable);
        # model and input errors fail the audit inside run_shard and are never retried.
        autoretry_for=(OperationalError,),
        retry_backoff=2,
        retry_backoff_max=300,
        retry_jitter=True,
        max_retries=20,
    )
    def run_shard_task(self: Task, audit_id: str, shard: int) -> str:
        return run_shard(audit_id, shard, *urls, options)

    return app


def __getattr__(name: str) -> Celery:
    """`celery -A workers.app` finds `app` here, built from the environment on first use."""
    if name in ("app", "celery"):
        return _environment_app()
    raise AttributeError(name)


@cache
def _environment_app() -> Celery:
    return create_celery(get_settings())
