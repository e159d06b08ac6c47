"""Run one shard of a queued audit: the body of a job, whichever queue delivered it.

The database is the source of truth. A job proceeds only by claiming its shard (`queued` ->
`running` in one conditional UPDATE), so a message delivered twice runs once. The sweep runs
in a sandboxed child process (`shiftaudit.sandbox`): the uploaded model is untrusted code,
and this process holds database credentials. While it runs, a heartbeat thread writes
progress and watches for cancellation; the shard that finishes last merges every shard's
statistics into the one report, written by a conditional UPDATE that only a running audit
passes, so an audit gets exactly one report however often its jobs run.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import ColumnElement, func, select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from service.audits.repository import fairest_queued_shards
from service.audits.tables import Audit, AuditReport, AuditShard
from service.backoff import retry
from service.compare.service import regression_reasons
from service.db import make_engine, session_factory, utcnow
from service.errors import DomainError
from service.models.tables import ModelFile
from service.outbound_webhooks.outbox import record_audit_events
from service.policies.evaluate import evaluate
from service.probe_sets.tables import ProbeSetFile
from service.scratch import owner, scratch_directory
from service.settings import Settings
from service.storage import StorageError, storage_from_url
from service.worker_cache import ArtifactCache
from shiftaudit.config import AuditConfig
from shiftaudit.engine import merge_shards
from shiftaudit.errors import ShiftAuditError, plain_message
from shiftaudit.report import Report, ShardResult
from shiftaudit.sandbox import Limits, SandboxError, Stopped, WarmSandbox, sweep_in_sandbox
from shiftaudit_api.audits import OPEN_STATUSES, AuditStatus
from shiftaudit_api.policies import PolicyResult

log = logging.getLogger(__name__)

# Progress and heartbeat are written at most this often: rows are cheap, not free.
HEARTBEAT_S = 1.0
# Writing the outcome is retried this long through a database outage before the shard is
# left to the reconciler (its heartbeat goes stale and it is queued again).
FINISH_RETRY_S = 120.0


@dataclass(frozen=True)
class JobOptions:
    """How this worker runs jobs: limits, where artifacts are cached, who it is."""

    limits: Limits
    cache_dir: Path
    cache_bytes: int
    max_attempts: int = 3  # runs of a shard whose sweep was killed from outside
    worker: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")
    # Keep a sandbox fork server that forks each job's process (shiftaudit.sandbox.WarmSandbox):
    # a small audit then skips the seconds of interpreter start and engine import.
    warm_sandbox: bool = True


def job_options(settings: Settings, *, threads: int | None = None) -> JobOptions:
    """This machine's job options from the settings; `threads` per sweep (None: all cores)."""
    return JobOptions(
        limits=Limits(
            wall_time_s=settings.audit_time_limit_s,
            memory_bytes=settings.audit_memory_limit_mb * 2**20,
            limit_data=not gpu_present(),
            threads=threads,
        ),
        cache_dir=settings.resolved_worker_cache_dir,
        cache_bytes=settings.worker_cache_bytes,
        max_attempts=settings.max_attempts,
        warm_sandbox=settings.warm_sandbox,
    )


def job_scratch(cache_dir: Path) -> Path:
    """Where jobs of workers with this cache keep their scratch (one directory a job, named
    after its process: `shiftaudit worker` and `serve` remove dead processes' on start)."""
    return cache_dir / "scratch"


_warm: WarmSandbox | None = None


def warm_sandbox(options: JobOptions) -> WarmSandbox:
    """This process's fork server, waiting in the job scratch under a name that
    `remove_stale` ties to this process."""
    global _warm
    root = job_scratch(options.cache_dir)
    if _warm is None or _warm.root != root:
        if _warm is not None:
            _warm.close()
        _warm = WarmSandbox(root, prefix=f"warm-{owner()}-")
    return _warm


def prepare_sandbox(options: JobOptions) -> None:
    """Start this process's sandbox fork server before its first job arrives (call it from
    the thread that will run the jobs: the fork server, and so each job's process, dies
    with it)."""
    if options.warm_sandbox:
        warm_sandbox(options).prepare_quietly(options.limits)


def gpu_present() -> bool:
    """Whether this process may use an NVIDIA GPU, asked without initialising CUDA (a
    worker must not, before its pool forks)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return False
    gpus = Path("/proc/driver/nvidia/gpus")
    return gpus.is_dir() and any(gpus.iterdir())


def run_shard(
    audit_id: str, shard: int, database_url: str, storage_url: str, options: JobOptions
) -> str:
    """Run one shard of audit `audit_id`; returns the shard's final state.

    Raises OperationalError only when the shard could not be claimed (a transient database
    outage; the caller retries). Takes URLs rather than the settings: a job needs no secrets.
    """
    engine = make_engine(database_url)
    try:
        job = _Job(uuid.UUID(audit_id), shard, session_factory(engine), options)
        return job.run(storage_url).value
    finally:
        engine.dispose()


class _Job:
    def __init__(
        self,
        audit_id: uuid.UUID,
        shard: int,
        sessions: sessionmaker[Session],
        options: JobOptions,
    ) -> None:
        self.audit_id, self.shard, self.sessions, self.options = audit_id, shard, sessions, options

    def run(self, storage_url: str) -> AuditStatus:
        claimed = self._claim()
        if isinstance(claimed, AuditStatus):
            return claimed  # not ours to run: a duplicate, or the audit is over
        config, model_sha, probes_sha, span, shards = claimed
        try:
            with (
                _Heartbeat(self) as heartbeat,
                scratch_directory(job_scratch(self.options.cache_dir), "job") as work,
            ):
                cache = ArtifactCache(
                    self.options.cache_dir,
                    storage_from_url(storage_url, tmp_dir=work),
                    max_bytes=self.options.cache_bytes,
                )
                with cache.use(model_sha) as model, cache.use(probes_sha) as probes:
                    result = sweep_in_sandbox(
                        model=model,
                        probes=probes,
                        config=config,
                        span=span,
                        work_dir=work,
                        limits=self.options.limits,
                        on_tick=heartbeat.set_progress,
                        should_stop=heartbeat.stop_requested.is_set,
                        tuning_cache=self.options.cache_dir / "tuning",
                        warm=warm_sandbox(self.options) if self.options.warm_sandbox else None,
                    )
        except Stopped:
            return self._settle(AuditStatus.CANCELLED)
        except SandboxError as error:
            where = f"shard {self.shard + 1} of {shards}: " if shards > 1 else ""
            if error.transient:
                return self._again(f"{where}{error}")
            return self._fail(f"{where}{error}")
        except ShiftAuditError as error:
            where = f"shard {self.shard + 1} of {shards}: " if shards > 1 else ""
            return self._fail(f"{where}{error}")
        except StorageError as error:  # missing, corrupt, or an outage outlasting the retries
            return self._fail(f"artifact storage: {error}")
        except Exception:  # the worker itself: this audit fails, not others
            log.exception("audit %s shard %s failed", self.audit_id, self.shard)
            return self._fail(
                "the worker failed on an internal error, not the model's or the input's; "
                "its log has the details"
            )
        return self._succeed(result)

    def _claim(
        self,
    ) -> tuple[dict[str, object], str, str, tuple[int, int], int] | AuditStatus:
        """Take the fairest queued shard of this job's queue (usually its own); else the
        job's shard's state.

        A job's message is a turn on its queue: the shard it names is a hint, and another
        team's shard goes first when that team has fewer shards running, or has waited
        longer since its last one started (round robin). A team with hours queued cannot
        hold back another's small audit beyond the shard now running; the shard passed over
        keeps its place (another message, or the reconciler's resend, takes it).
        """
        with self.sessions.begin() as session:
            audit = session.get(Audit, self.audit_id)
            hinted = session.get(AuditShard, (self.audit_id, self.shard))
            if audit is None or hinted is None:
                return self._status(session)
            if audit.status not in OPEN_STATUSES:
                self._update_shard(session, AuditStatus.QUEUED, status=AuditStatus.CANCELLED)
            now = utcnow()
            for audit_id, shard in fairest_queued_shards(session, route=hinted.route, now=now):
                if move_shard(
                    session,
                    audit_id,
                    shard,
                    [AuditStatus.QUEUED],
                    status=AuditStatus.RUNNING,
                    attempts=AuditShard.attempts + 1,
                    worker=self.options.worker,
                    started_at=now,
                    heartbeat_at=now,
                ):
                    self.audit_id, self.shard = audit_id, shard
                    break
            else:
                return self._status(session)  # nothing queued: a redelivery does nothing
            audit = session.get_one(Audit, self.audit_id)
            session.execute(
                update(Audit)
                .where(Audit.id == self.audit_id, Audit.status == AuditStatus.QUEUED)
                .values(status=AuditStatus.RUNNING, started_at=now, heartbeat_at=now)
            )
            row = session.get_one(AuditShard, (self.audit_id, self.shard))
            shards = session.scalar(
                select(func.count()).where(AuditShard.audit_id == self.audit_id)
            )
            return (
                audit.config,
                session.get_one(ModelFile, audit.model_id).sha256,
                session.get_one(ProbeSetFile, audit.probe_set_id).sha256,
                (row.probe_start, row.probe_stop),
                int(shards or 1),
            )

    def _status(self, session: Session) -> AuditStatus:
        current = session.scalar(select(AuditShard.status).where(*self._shard_key()))
        return current or AuditStatus.CANCELLED

    def _shard_key(self) -> tuple[ColumnElement[bool], ColumnElement[bool]]:
        return AuditShard.audit_id == self.audit_id, AuditShard.shard == self.shard

    def _update_shard(self, session: Session, *current: AuditStatus, **values: object) -> bool:
        return move_shard(session, self.audit_id, self.shard, current, **values)

    def beat(self, progress: float) -> bool:
        """Write progress and heartbeat; False when the audit no longer runs (stop)."""
        now = utcnow()
        with self.sessions.begin() as session:
            self._update_shard(
                session, AuditStatus.RUNNING, progress=round(progress, 4), heartbeat_at=now
            )
            average = session.scalar(
                select(func.avg(AuditShard.progress)).where(AuditShard.audit_id == self.audit_id)
            )
            moved = session.execute(
                update(Audit)
                .where(Audit.id == self.audit_id, Audit.status == AuditStatus.RUNNING)
                .values(progress=round(min(float(average or 0.0), 0.99), 4), heartbeat_at=now)
            )
        return bool(moved.rowcount)  # type: ignore[attr-defined]

    def _settle(self, status: AuditStatus) -> AuditStatus:
        _retry(lambda: self._write_shard(status))
        return status

    def _write_shard(self, status: AuditStatus, result: ShardResult | None = None) -> None:
        values: dict[str, object] = {"status": status, "finished_at": utcnow()}
        if result is not None:
            values |= {"progress": 1.0, "result": result.model_dump(mode="json")}
        with self.sessions.begin() as session:
            # From queued too: the reconciler may have re-queued a shard whose heartbeat a
            # database outage delayed; its result is as good as any other run's.
            self._update_shard(session, AuditStatus.RUNNING, AuditStatus.QUEUED, **values)

    def _again(self, error: str) -> AuditStatus:
        """The sweep was killed from outside: queue the shard again, as the reconciler does
        for a lost worker (its next pass sends it), until it has run `max_attempts` times."""
        with self.sessions() as session:
            attempts = session.scalar(select(AuditShard.attempts).where(*self._shard_key()))
        if attempts is not None and attempts >= self.options.max_attempts:
            return self._fail(f"{error}; the audit failed after {attempts} attempts")
        log.warning("audit %s shard %s: %s; queued again", self.audit_id, self.shard, error)

        def write() -> None:
            with self.sessions.begin() as session:
                self._update_shard(
                    session,
                    AuditStatus.RUNNING,
                    status=AuditStatus.QUEUED,
                    progress=0.0,
                    queued_at=utcnow(),
                )

        _retry(write)
        return AuditStatus.QUEUED

    def _fail(self, error: str) -> AuditStatus:
        """Fail the shard and its audit (model and input errors are never retried)."""

        def write() -> None:
            self._write_shard(AuditStatus.FAILED)
            with self.sessions.begin() as session:
                fail_audit(session, self.audit_id, error)

        _retry(write)
        return AuditStatus.FAILED

    def _succeed(self, result: ShardResult) -> AuditStatus:
        _retry(lambda: self._write_shard(AuditStatus.SUCCEEDED, result))
        _retry(lambda: complete_audit(self.sessions, self.audit_id))
        return AuditStatus.SUCCEEDED


def move_shard(
    session: Session,
    audit_id: uuid.UUID,
    shard: int,
    current: Iterable[AuditStatus],
    **values: object,
) -> bool:
    """Update a shard only while it is in one of `current`: another process (a worker, the
    reconciler) may have moved it first. True if it was updated."""
    moved = session.execute(
        update(AuditShard)
        .where(
            AuditShard.audit_id == audit_id,
            AuditShard.shard == shard,
            AuditShard.status.in_(list(current)),
        )
        .values(**values)
    )
    return bool(moved.rowcount)  # type: ignore[attr-defined]


def fail_audit(session: Session, audit_id: uuid.UUID, error: str) -> bool:
    """Fail a queued or running audit (and queue its webhook events); False if it was over."""
    failed = session.execute(
        update(Audit)
        .where(Audit.id == audit_id, Audit.status.in_(OPEN_STATUSES))
        .values(status=AuditStatus.FAILED, finished_at=utcnow(), error=plain_message(error))
    )
    if failed.rowcount != 1:  # type: ignore[attr-defined]
        return False
    record_audit_events(session, session.get_one(Audit, audit_id, populate_existing=True))
    return True


def complete_audit(sessions: sessionmaker[Session], audit_id: uuid.UUID) -> bool:
    """Merge the shards into the report once every shard has succeeded; True if written.

    Safe to call from anywhere, any number of times: only a running audit can finish, in the
    same transaction that stores its report.
    """
    with sessions() as session:
        audit = session.get(Audit, audit_id)
        if audit is None or audit.status is not AuditStatus.RUNNING:
            return False
        shards = session.scalars(
            select(AuditShard).where(AuditShard.audit_id == audit_id).order_by(AuditShard.shard)
        ).all()
        if not shards or any(s.status is not AuditStatus.SUCCEEDED for s in shards):
            return False
        try:
            config = AuditConfig.model_validate(audit.config)
            results = [ShardResult.model_validate(s.result) for s in shards]
            report = merge_shards(results, config)
        except ShiftAuditError as error:
            failed = _finish(
                sessions, audit_id, AuditStatus.FAILED, error=f"merging shards: {error}"
            )
            return failed is not None
        except Exception:  # a stored config or state the merge cannot take: this audit only
            log.exception("merging the shards of audit %s failed", audit_id)
            failed = _finish(
                sessions,
                audit_id,
                AuditStatus.FAILED,
                error="its shards could not be merged into a report (the worker's log has "
                "the details)",
            )
            return failed is not None
        verdict = None
        if audit.policies:
            try:
                verdict = evaluate(
                    audit.policies,
                    report,
                    regressions=lambda rule: regression_reasons(
                        session=session, audit=audit, report=report, rule=rule
                    ),
                )
            except DomainError as error:  # a gate that cannot be judged: say why, finish
                failed = _finish(
                    sessions, audit_id, AuditStatus.FAILED, error=f"evaluating policies: {error}"
                )
                return failed is not None
    finished = _finish(
        sessions, audit_id, AuditStatus.SUCCEEDED, report=report, policy_result=verdict
    )
    return finished is not None


def _finish(
    sessions: sessionmaker[Session],
    audit_id: uuid.UUID,
    status: AuditStatus,
    *,
    error: str | None = None,
    report: Report | None = None,
    policy_result: PolicyResult | None = None,
) -> AuditStatus | None:
    """Write the final state once: only a running audit can finish (not a cancelled one)."""
    values: dict[str, object] = {
        "status": status,
        "finished_at": utcnow(),
        "error": None if error is None else plain_message(error),
    }
    if policy_result is not None:
        values["policy_result"] = policy_result.model_dump(mode="json")
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
            return None
        if report is not None:
            session.add(AuditReport(audit_id=audit_id, report=report.model_dump(mode="json")))
        record_audit_events(session, session.get_one(Audit, audit_id, populate_existing=True))
    return status


def _retry(write: Callable[[], object]) -> None:
    """Run a database write, retrying through a transient outage with backoff."""
    retry(
        write,
        transient=OperationalError,
        budget_s=FINISH_RETRY_S,
        max_delay_s=10.0,
        what="database unavailable",
    )


class _Heartbeat(threading.Thread):
    """Writes progress and heartbeat every HEARTBEAT_S, from claim to outcome.

    A write that fails (the database is briefly down) is skipped, not fatal: the sweep goes
    on, and the next beat catches up. When the audit is no longer running (cancelled, or
    failed by another shard) it asks the sweep to stop.
    """

    def __init__(self, job: _Job) -> None:
        super().__init__(daemon=True, name=f"heartbeat-{job.audit_id}-{job.shard}")
        self.job = job
        self.progress = 0.0
        self.stop_requested = threading.Event()
        self._done = threading.Event()

    def set_progress(self, progress: float) -> None:
        self.progress = progress

    def run(self) -> None:
        while not self._done.wait(HEARTBEAT_S):
            try:
                if not self.job.beat(self.progress):
                    self.stop_requested.set()
            except OperationalError as error:
                log.warning("heartbeat skipped, database unavailable: %s", error.orig)

    def __enter__(self) -> _Heartbeat:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self.join()
