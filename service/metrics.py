"""Prometheus metrics: HTTP traffic per route template, and audits by status from the database.

Every app gets its own `CollectorRegistry` (`app.state.metrics_registry`), so several apps in
one process (tests, for instance) never share or clash over series.

`GET /metrics` is unauthenticated, as scrapers expect, and counts audits across all teams:
operators should not expose it publicly (scrape it on an internal network, or deny `/metrics`
at the reverse proxy).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from fastapi import FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import Metric
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.audits.tables import Audit
from shiftaudit_api.audits import AuditStatus

logger = logging.getLogger(__name__)

UNMATCHED = "<unmatched>"  # the route label of requests no route matched (404s): never the path
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def route_template(scope: Scope) -> str:
    """The path template of the route that handled the request, e.g. `/v1/models/{model_id}`.

    The router stores the matched route in the scope. It is the route as its own router
    declared it, so a prefix given to `include_router(prefix=...)` would be missing: this app's
    routers carry their prefixes themselves (`APIRouter(prefix=...)`).
    """
    route = scope.get("route")
    if isinstance(route, BaseRoute):
        path = getattr(route, "path_format", None) or getattr(route, "path", None)
        if isinstance(path, str) and path:
            return path
    return UNMATCHED


class HttpMetrics:
    """Request count and latency, labelled by method, route template and status code."""

    def __init__(self, registry: CollectorRegistry) -> None:
        labels = ("method", "route", "status")
        self.requests = Counter(
            "shiftaudit_http_requests",
            "HTTP requests handled, by method, route template and status code.",
            labels,
            registry=registry,
        )
        self.latency = Histogram(
            "shiftaudit_http_request_duration_seconds",
            "Time from receiving an HTTP request to sending the end of its response.",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        method = method if method in METHODS else "OTHER"  # clients choose methods too
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route, str(status)).observe(seconds)


class MetricsMiddleware:
    """Pure ASGI middleware (no buffering, so streamed uploads stay streamed)."""

    def __init__(self, app: ASGIApp, *, metrics: HttpMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500  # what the client gets if the app raises before starting a response
        started = time.perf_counter()

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            # The router wrote the matched route into the (shared) scope on the way in.
            self.metrics.observe(
                scope["method"], route_template(scope), status, time.perf_counter() - started
            )


class AuditCollector:
    """Audits by status and the queue depth, counted at scrape time with one GROUP BY.

    Across all teams: /metrics is an operator endpoint, and only counts leave the database.
    """

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

    def describe(self) -> Iterable[Metric]:
        # Names only, so registering never queries the database.
        return self._families()

    def collect(self) -> Iterable[Metric]:
        audits, queued, database_up = self._families()
        try:
            with self.sessions() as session:
                rows = session.execute(
                    select(Audit.status, func.count()).group_by(Audit.status)
                ).all()
        except SQLAlchemyError:
            logger.exception("metrics: counting audits failed")
            database_up.add_metric([], 0)
            return [database_up]
        counts = dict.fromkeys(AuditStatus, 0)
        for status, count in rows:
            counts[AuditStatus(status)] = int(count)
        for status, count in counts.items():
            audits.add_metric([status.value], count)
        queued.add_metric([], counts[AuditStatus.QUEUED])
        database_up.add_metric([], 1)
        return [audits, queued, database_up]

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily]:
        audits = GaugeMetricFamily(
            "shiftaudit_audits", "Audits in the database, by status.", labels=["status"]
        )
        queued = GaugeMetricFamily(
            "shiftaudit_audit_queue_depth", "Audits waiting to run (status 'queued')."
        )
        database_up = GaugeMetricFamily(
            "shiftaudit_metrics_database_up",
            "1 if this scrape could count audits in the database, else 0.",
        )
        return audits, queued, database_up


def install(app: FastAPI) -> None:
    """A per-app registry, the HTTP middleware and `GET /metrics` (not in the OpenAPI schema).

    Call after `app.state.sessions` is set.
    """
    registry = CollectorRegistry()
    metrics = HttpMetrics(registry)
    registry.register(AuditCollector(app.state.sessions))
    app.state.metrics_registry = registry
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.add_api_route("/metrics", _endpoint(registry), methods=["GET"], include_in_schema=False)


def _endpoint(registry: CollectorRegistry) -> Callable[..., Any]:
    def metrics() -> Response:
        """Prometheus text format. Unauthenticated, as scrapers expect: operators should not
        expose it publicly (serve it on an internal network, or block `/metrics` at the proxy),
        since it reveals traffic and audit volumes across all teams."""
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return metrics
