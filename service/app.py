"""The FastAPI application factory."""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from service import metrics, problems
from service.audits import endpoints as audits
from service.audits.reconciler import policy_from, reconcile_once
from service.compare import endpoints as compare
from service.db import make_engine, session_factory, utcnow
from service.errors import Unavailable
from service.guard import CloseUnreadBodies
from service.models import endpoints as models
from service.outbound_webhooks import endpoints as outbound_webhooks
from service.policies import endpoints as policies
from service.probe_sets import endpoints as probe_sets
from service.queue import AuditQueue, EmbeddedQueue, queue_from_settings
from service.registry_hooks import endpoints as registry_hooks
from service.settings import Settings, get_settings
from service.storage import storage_from_url
from service.teams import endpoints as teams
from service.ui import export as ui_export
from service.ui import pages as ui_pages
from shiftaudit_api import API_VERSION

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, queue: AuditQueue | None = None) -> FastAPI:
    """An app bound to one database and queue; the caller applies migrations first.

    Without a queue: Celery workers when REDIS_URL is set, else the embedded runner (child
    processes of this machine).
    """
    settings = settings or get_settings()
    audit_queue = queue or queue_from_settings(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        stop = threading.Event()
        if isinstance(audit_queue, EmbeddedQueue):
            # No reconciler process beside the embedded runner: this thread re-runs what an
            # earlier process left queued or running when it stopped.
            threading.Thread(
                target=_reconcile_until,
                args=(stop, app.state.sessions, audit_queue, settings),
                daemon=True,
                name="reconciler",
            ).start()
        yield
        stop.set()
        audit_queue.close()

    app = FastAPI(
        title="shiftaudit",
        version=API_VERSION,
        description="Audits image classifiers for translation invariance.",
        lifespan=lifespan,
        responses=problems.PROBLEM_RESPONSES,
    )
    app.state.queue = audit_queue
    app.state.settings = settings
    app.state.engine = make_engine(settings.resolved_database_url)
    app.state.sessions = session_factory(app.state.engine)
    # S3 uploads spool under the data directory's scratch, where a restart finds what a
    # killed server left (the system temp directory is not ours to sweep).
    app.state.storage = storage_from_url(
        settings.resolved_storage_url, tmp_dir=settings.data_dir / "tmp"
    )
    # Unpacking and checking a probe-set archive costs disk and a core: so many at once.
    app.state.probe_checks = threading.BoundedSemaphore(settings.max_concurrent_probe_checks)
    problems.install(app)
    metrics.install(app)  # GET /metrics and the request-metrics middleware
    # Outermost: it sees the answer of every route, refusals before the body included.
    app.add_middleware(CloseUnreadBodies)
    for domain in (
        teams,
        models,
        audits,
        compare,
        policies,
        outbound_webhooks,
        registry_hooks,
        probe_sets,
        ui_export,
    ):
        app.include_router(domain.router, responses=problems.PROBLEM_RESPONSES)
    app.include_router(ui_pages.router)  # /ui: the dashboard (static pages, no data)

    @app.get("/healthz", tags=["operations"])
    def healthz() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["operations"], responses={503: {"description": "not ready"}})
    def readyz() -> dict[str, str]:
        """Readiness: the database answers and the queue can take audits."""
        try:
            with app.state.engine.connect() as connection:
                connection.execute(text("SELECT 1"))
        except SQLAlchemyError as error:
            raise Unavailable(f"database unreachable: {type(error).__name__}") from error
        try:
            app.state.queue.ping()
        except Exception as error:  # any broker failure means: do not route traffic here
            raise Unavailable(f"queue unreachable: {type(error).__name__}") from error
        return {"status": "ready", "database": "ok", "queue": "ok"}

    # HEAD too (load balancers and uptime checkers probe with it), out of the schema: the
    # GET operations document them.
    for path, probe in (("/healthz", healthz), ("/readyz", readyz)):
        app.add_api_route(path, probe, methods=["HEAD"], include_in_schema=False)

    return app


def _reconcile_until(
    stop: threading.Event, sessions: sessionmaker[Session], queue: AuditQueue, settings: Settings
) -> None:
    policy = policy_from(settings)
    while not stop.is_set():
        try:
            reconcile_once(sessions, queue, policy, now=utcnow())
        except Exception:  # logged; the next pass tries again
            log.exception("reconcile pass failed")
        stop.wait(settings.reconcile_interval_s)
