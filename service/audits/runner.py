"""Execute one queued audit: the body of a job, whichever queue delivered it.

It runs in a process of its own (the embedded pool's child, later a Celery worker), never in
the API process: an uploaded model is untrusted code. The database row is the source of
truth: the job only proceeds from `queued`, and a `cancelled` row stops it at the next
progress report.
"""

from __future__ import annotations

import tempfile
import time
import uuid
from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from service.audits.models import Audit, AuditReport, AuditStatus
from service.classifiers.models import ModelFile
from service.db import make_engine, session_factory, utcnow
from service.probe_sets.models import ProbeSetFile
from service.storage import storage_from_url
from shiftaudit.config import AuditConfig
from shiftaudit.engine import run_audit
from shiftaudit.errors import ShiftAuditError
from shiftaudit.report import Report

# Progress is written at most this often: rows are cheap, but not free at 10 Hz per audit.
PROGRESS_INTERVAL_S = 1.0


class Cancelled(Exception):
    """The audit's row was set to cancelled while it ran."""


def run_job(audit_id: str, database_url: str, storage_url: str) -> str:
    """Run audit `audit_id` to a final state; returns that state.

    Takes URLs rather than the settings: a job needs no secrets, so none are passed to it.
    """
    engine = make_engine(database_url)
    try:
        return _run(uuid.UUID(audit_id), storage_url, session_factory(engine)).value
    finally:
        engine.dispose()


def _run(audit_id: uuid.UUID, storage_url: str, sessions: sessionmaker[Session]) -> AuditStatus:
    with sessions.begin() as session:
        claimed = session.execute(
            update(Audit)
            .where(Audit.id == audit_id, Audit.status == AuditStatus.QUEUED)
            .values(status=AuditStatus.RUNNING, started_at=utcnow(), heartbeat_at=utcnow())
        )
        if claimed.rowcount != 1:  # type: ignore[attr-defined]
            # Already taken, finished or cancelled: a redelivered job does nothing.
            status = session.scalar(select(Audit.status).where(Audit.id == audit_id))
            return status or AuditStatus.FAILED
        audit = session.get_one(Audit, audit_id)
        model_sha = session.get_one(ModelFile, audit.model_id).sha256
        probes_sha = session.get_one(ProbeSetFile, audit.probe_set_id).sha256
        config = AuditConfig.model_validate(audit.config)
    storage = storage_from_url(storage_url)
    try:
        with tempfile.TemporaryDirectory(prefix="shiftaudit-job-") as work:
            model = storage.fetch(model_sha, Path(work) / "model")
            probes = storage.fetch(probes_sha, Path(work) / "probes")
            report = run_audit(model, probes, config, progress=_Reporter(audit_id, sessions))
    except Cancelled:
        return AuditStatus.CANCELLED
    except ShiftAuditError as error:
        return _finish(sessions, audit_id, AuditStatus.FAILED, error=str(error))
    except Exception as error:  # a crash in the model or the engine fails this audit only
        return _finish(
            sessions,
            audit_id,
            AuditStatus.FAILED,
            error=f"internal error: {type(error).__name__}: {error}",
        )
    return _finish(sessions, audit_id, AuditStatus.SUCCEEDED, report=report)


def _finish(
    sessions: sessionmaker[Session],
    audit_id: uuid.UUID,
    status: AuditStatus,
    *,
    error: str | None = None,
    report: Report | None = None,
) -> AuditStatus:
    """Write the final state once: only a running audit can finish (not a cancelled one)."""
    values: dict[str, object] = {"status": status, "finished_at": utcnow(), "error": error}
    if report is not None:
        summary = report.summary.all
        values |= {
            "progress": 1.0,
            "consistency": summary.consistency.value,
            "flip_rate": None if summary.flip_rate is None else summary.flip_rate.value,
            "accuracy": None if summary.accuracy is None else summary.accuracy.value,
            "worst_case_accuracy": None
            if summary.worst_case_accuracy is None
            else summary.worst_case_accuracy.value,
            "schema_version": report.schema_version,
        }
    with sessions.begin() as session:
        done = session.execute(
            update(Audit)
            .where(Audit.id == audit_id, Audit.status == AuditStatus.RUNNING)
            .values(**values)
        )
        if done.rowcount != 1:  # type: ignore[attr-defined]
            return AuditStatus.CANCELLED
        if report is not None:
            session.merge(AuditReport(audit_id=audit_id, report=report.model_dump(mode="json")))
    return status


class _Reporter:
    """The engine's progress callback: throttled progress and heartbeat, cancellation check."""

    def __init__(self, audit_id: uuid.UUID, sessions: sessionmaker[Session]) -> None:
        self.audit_id = audit_id
        self.sessions = sessions
        self.last = 0.0

    def __call__(self, fraction: float, stage: str) -> None:
        now = time.monotonic()
        if now - self.last < PROGRESS_INTERVAL_S:
            return
        self.last = now
        with self.sessions.begin() as session:
            moved = session.execute(
                update(Audit)
                .where(Audit.id == self.audit_id, Audit.status == AuditStatus.RUNNING)
                .values(progress=round(min(fraction, 0.99), 4), heartbeat_at=utcnow())
            )
        if moved.rowcount != 1:  # type: ignore[attr-defined]
            raise Cancelled
