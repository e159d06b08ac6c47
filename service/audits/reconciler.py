"""The reconciler: make the broker agree with the database, which is the source of truth.

One pass (every `reconcile_interval_s`):
- a running shard whose heartbeat is older than `heartbeat_timeout_s` lost its worker: it is
  queued again (or its audit fails after `max_attempts` runs);
- a queued shard whose message is not waiting in the broker (Redis keeps nothing on disk, so
  a restart loses every queued message) is sent again;
- a running audit whose shards all succeeded but whose merge never happened (the worker died
  in between) is merged here;
- idempotency keys past their lifetime are deleted.
A duplicate message costs nothing: a worker runs a shard only by claiming it in the database.
With Celery it runs as its own small process (`shiftaudit reconciler`) rather than as a beat
task, which could wait behind hours-long audits on busy workers; the embedded service runs it
in a thread. It reads and writes rows only: no model is ever loaded here.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import TypeVar

from sqlalchemy import ColumnElement, select
from sqlalchemy.orm import Session, sessionmaker

from service.audits.runner import complete_audit, fail_audit, move_shard
from service.audits.tables import Audit, AuditShard
from service.db import make_engine, session_factory, utcnow
from service.idempotency import purge_expired_keys
from service.outbound_webhooks.outbox import DeliveryRules, dispatch_due
from service.queue import AuditQueue, queue_from_settings
from service.routing import job_id
from service.settings import Settings
from shiftaudit_api.audits import OPEN_STATUSES, AuditStatus

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Policy:
    stale_after: timedelta  # a heartbeat older than this means the worker is gone
    resend_after: timedelta  # a queued shard's message may be in flight this long
    max_attempts: int
    webhooks: DeliveryRules = field(default_factory=DeliveryRules)


def reconcile_once(
    sessions: sessionmaker[Session], queue: AuditQueue, policy: Policy, *, now: datetime
) -> Counter[str]:
    """One pass; returns what it did, by kind.

    Each item (a shard, an audit, a delivery) is handled in its own transaction, and one
    that fails is logged, marked where it can be (its audit failed with the reason) and
    counted under "errors": one tenant's poisoned audit never keeps the pass from the
    others' merges and webhooks.
    """
    done: Counter[str] = Counter()
    with sessions() as session:
        stale = _keys_where(
            session,
            AuditShard.status == AuditStatus.RUNNING,
            AuditShard.heartbeat_at < now - policy.stale_after,
        )
    for key in stale:
        requeue = partial(_requeue_stale, sessions, queue, policy, key, now, done)
        _isolated(done, f"stale shard {key}", requeue)
    waiting = _isolated(done, "the broker's queue", queue.waiting)
    if waiting is not None:
        with sessions() as session:
            queued = _keys_where(
                session,
                AuditShard.status == AuditStatus.QUEUED,
                AuditShard.queued_at < now - policy.resend_after,
                Audit.status.in_(OPEN_STATUSES),
            )
        for key in queued:
            if job_id(*key) not in waiting:
                _isolated(
                    done, f"queued shard {key}", partial(_resend, sessions, queue, key, now, done)
                )
    with sessions() as session:
        merged = session.scalars(
            select(Audit.id)
            .where(
                Audit.status == AuditStatus.RUNNING,
                Audit.heartbeat_at < now - policy.stale_after,
                ~Audit.id.in_(
                    select(AuditShard.audit_id).where(AuditShard.status != AuditStatus.SUCCEEDED)
                ),
            )
            .order_by(Audit.created_at, Audit.id)
        ).all()
    for audit_id in merged:
        if _isolated(
            done, f"merging audit {audit_id}", partial(complete_audit, sessions, audit_id)
        ):
            done["merged"] += 1
    expired = _isolated(done, "expired idempotency keys", partial(_purge, sessions, now))
    if expired:
        done["idempotency_keys_expired"] = expired
    # Now, not the pass's start: the events of this pass's merges are due too.
    deliver = partial(dispatch_due, sessions, now=max(now, utcnow()), rules=policy.webhooks)
    webhooks = _isolated(done, "webhook deliveries", deliver) or Counter()
    done.update({f"webhook_{outcome}": count for outcome, count in webhooks.items()})
    return done


T = TypeVar("T")


def _isolated(done: Counter[str], what: str, step: Callable[[], T]) -> T | None:
    """Run one item's step; a failure is logged and counted, and the pass goes on."""
    try:
        return step()
    except Exception:
        log.exception("reconciling %s failed", what)
        done["errors"] += 1
        return None


def _requeue_stale(
    sessions: sessionmaker[Session],
    queue: AuditQueue,
    policy: Policy,
    key: tuple[uuid.UUID, int],
    now: datetime,
    done: Counter[str],
) -> None:
    """A shard whose worker is gone: queued again, or its audit failed after max_attempts."""
    with sessions.begin() as session:
        shard = session.get_one(AuditShard, key)
        audit = session.get_one(Audit, shard.audit_id)
        if shard.status is not AuditStatus.RUNNING:
            return  # it moved since the pass looked
        if audit.status not in OPEN_STATUSES:
            _move(session, shard, AuditStatus.RUNNING, status=AuditStatus.CANCELLED)
            return
        if shard.attempts >= policy.max_attempts:
            _move(session, shard, AuditStatus.RUNNING, status=AuditStatus.FAILED)
            fail_audit(
                session, audit.id, f"lost its worker {shard.attempts} times (last: {shard.worker})"
            )
            done["failed"] += 1
            return
        if not _move(
            session,
            shard,
            AuditStatus.RUNNING,
            status=AuditStatus.QUEUED,
            progress=0.0,
            queued_at=now,
        ):
            return
        route = shard.route
    # The message only after the commit: a worker must find the shard queued.
    queue.enqueue(key[0], key[1], route=route)
    done["requeued"] += 1


def _resend(
    sessions: sessionmaker[Session],
    queue: AuditQueue,
    key: tuple[uuid.UUID, int],
    now: datetime,
    done: Counter[str],
) -> None:
    """A queued shard whose message the broker lost: sent again."""
    with sessions.begin() as session:
        shard = session.get_one(AuditShard, key)
        if not _move(session, shard, AuditStatus.QUEUED, queued_at=now):
            return
        route = shard.route
    queue.enqueue(key[0], key[1], route=route)
    done["resent"] += 1


def _purge(sessions: sessionmaker[Session], now: datetime) -> int:
    with sessions.begin() as session:
        return purge_expired_keys(session, now=now)


def _keys_where(session: Session, *conditions: ColumnElement[bool]) -> list[tuple[uuid.UUID, int]]:
    """(audit id, shard) of the shards matching `conditions`."""
    rows = session.execute(
        select(AuditShard.audit_id, AuditShard.shard)
        .join(Audit, Audit.id == AuditShard.audit_id)
        .where(*conditions)
    ).all()
    return [(audit_id, shard) for audit_id, shard in rows]


def _move(session: Session, shard: AuditShard, current: AuditStatus, **values: object) -> bool:
    return move_shard(session, shard.audit_id, shard.shard, [current], **values)


def policy_from(settings: Settings) -> Policy:
    return Policy(
        stale_after=timedelta(seconds=settings.heartbeat_timeout_s),
        resend_after=timedelta(seconds=settings.resend_after_s),
        max_attempts=settings.max_attempts,
        webhooks=DeliveryRules(
            deadline_s=settings.webhook_deadline_s,
            concurrency=settings.webhook_concurrency,
            allow_private=settings.webhook_allow_private,
        ),
    )


def run_reconciler(settings: Settings, *, once: bool = False) -> None:
    """Reconcile every `reconcile_interval_s` until killed; a failed pass is logged, retried."""
    if not settings.redis_url:
        raise SystemExit(
            "the reconciler process is for Celery deployments (set REDIS_URL); "
            "the embedded service reconciles by itself"
        )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    engine = make_engine(settings.resolved_database_url)
    sessions = session_factory(engine)
    queue = queue_from_settings(settings)
    policy = policy_from(settings)
    try:
        while True:
            try:
                done = reconcile_once(sessions, queue, policy, now=utcnow())
                if done:
                    log.info("reconciled: %s", dict(done))
            except Exception:  # the database or Redis is down: try again next interval
                log.exception("reconcile pass failed")
            if once:
                return
            time.sleep(settings.reconcile_interval_s)
    finally:
        queue.close()
        engine.dispose()
