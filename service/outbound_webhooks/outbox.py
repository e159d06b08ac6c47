"""Events into the outbox, in the transaction that changes the audit's state; sent later.

Writing the delivery rows with the state change means an event is never lost (the change
commits with it) nor sent for a change that rolled back.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import itertools
import json
import logging
import secrets
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Any, TypeVar

import httpx
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from service.audits.tables import Audit
from service.db import utcnow
from service.outbound_webhooks.destinations import (
    PinnedDestination,
    RefusedDestination,
    check_destination,
)
from service.outbound_webhooks.tables import WebhookDelivery, WebhookSubscription
from shiftaudit_api.audits import AuditStatus

log = logging.getLogger(__name__)
MAX_ATTEMPTS = 8
# A claimed delivery is leased for its deadline and this much more: another dispatcher sends
# it again only after the one that claimed it must have died.
LEASE_MARGIN_S = 60.0
MAX_LANES = 1000  # subscriptions served per pass; the rest are next pass's
MAX_PER_LANE = 100  # deliveries of one subscription per pass
T = TypeVar("T")
SIGNATURE_HEADER = "X-Shiftaudit-Signature"


def new_secret() -> str:
    return "whsec_" + base64.urlsafe_b64encode(secrets.token_bytes(24)).decode().rstrip("=")


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """`t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>`."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={digest.hexdigest()}"


def record_audit_events(session: Session, audit: Audit) -> None:
    """Queue the events of a finished audit for every subscription of its team."""
    events = []
    if audit.status is AuditStatus.SUCCEEDED:
        events.append("audit.succeeded")
        if audit.policy_result is not None and audit.policy_result["status"] == "failed":
            events.append("audit.policy_failed")
    elif audit.status is AuditStatus.FAILED:
        events.append("audit.failed")
    if not events:
        return
    subscriptions = session.scalars(
        select(WebhookSubscription).where(WebhookSubscription.team_id == audit.team_id)
    ).all()
    for event in events:
        for subscription in subscriptions:
            if event in subscription.events:
                session.add(
                    WebhookDelivery(
                        subscription_id=subscription.id, event=event, payload=_payload(audit)
                    )
                )


def _payload(audit: Audit) -> dict[str, Any]:
    return {
        "audit": {
            "id": str(audit.id),
            "status": audit.status.value,
            "model_id": str(audit.model_id),
            "probe_set_id": str(audit.probe_set_id),
            "error": audit.error,
            "consistency": audit.consistency,
            "flip_rate": audit.flip_rate,
            "accuracy": audit.accuracy,
            "worst_case_accuracy": audit.worst_case_accuracy,
            "policy": audit.policy_result,
            "finished_at": None if audit.finished_at is None else audit.finished_at.isoformat(),
        }
    }


@dataclass(frozen=True)
class DeliveryRules:
    """How one dispatcher pass sends: the deadline of each delivery (connect, send and the
    answer's status and headers, together), how many are in flight at once, and whether
    private addresses may be reached."""

    deadline_s: float = 10.0
    concurrency: int = 8
    allow_private: bool = False


@dataclass(frozen=True)
class _Claimed:
    """A delivery this dispatcher holds the lease on, with what sending it needs."""

    id: uuid.UUID
    url: str
    secret: str
    event: str
    attempt: int
    body: bytes


def dispatch_due(
    sessions: sessionmaker[Session], *, now: datetime, rules: DeliveryRules
) -> Counter[str]:
    """Send every delivery that is due at `now`; returns outcomes by kind.

    One lane per subscription, its deliveries in order, lanes taken round robin between
    teams, at most `rules.concurrency` at once, each delivery bounded by `rules.deadline_s`.
    A lane stops at its first delivery that must be retried, so a receiver that is slow or
    down costs its own team one deadline per pass and no other team anything.
    """
    lanes = _due_lanes(sessions, now=now)
    if not lanes:
        return Counter()
    return asyncio.run(_dispatch(sessions, lanes, now=now, rules=rules))


def _due_lanes(sessions: sessionmaker[Session], *, now: datetime) -> list[uuid.UUID]:
    """Subscriptions with something due, interleaved by team (each team's most overdue
    first), so that the first slots of a pass go to different teams."""
    with sessions() as session:
        rows = session.execute(
            select(WebhookSubscription.team_id, WebhookDelivery.subscription_id)
            .join(WebhookSubscription, WebhookSubscription.id == WebhookDelivery.subscription_id)
            .where(WebhookDelivery.status == "pending", WebhookDelivery.next_attempt_at <= now)
            .group_by(WebhookSubscription.team_id, WebhookDelivery.subscription_id)
            .order_by(func.min(WebhookDelivery.next_attempt_at))
            .limit(MAX_LANES)
        ).all()
    by_team: dict[uuid.UUID, list[uuid.UUID]] = {}
    for team_id, subscription_id in rows:
        by_team.setdefault(team_id, []).append(subscription_id)
    rounds = itertools.zip_longest(*by_team.values())
    return [lane for round_ in rounds for lane in round_ if lane is not None]


async def _dispatch(
    sessions: sessionmaker[Session],
    lanes: list[uuid.UUID],
    *,
    now: datetime,
    rules: DeliveryRules,
) -> Counter[str]:
    done: Counter[str] = Counter()
    slots = asyncio.Semaphore(rules.concurrency)  # waiters are served in order: the lanes'
    loop = asyncio.get_running_loop()
    # Its own threads for the database and name lookups: a lookup that hangs past its
    # deadline keeps a thread (left behind at the end, not waited for), and must not take
    # the default pool's few from the others.
    threads = ThreadPoolExecutor(max_workers=2 * rules.concurrency + 2)

    async def blocking(call: Callable[[], T]) -> T:
        return await loop.run_in_executor(threads, call)

    async def lane(subscription_id: uuid.UUID) -> None:
        async with slots:
            for _ in range(MAX_PER_LANE):
                claimed = await blocking(
                    partial(_claim_next, sessions, subscription_id, now=now, rules=rules)
                )
                if claimed is None:
                    return
                outcome = await _attempt(claimed, client, blocking, rules=rules)
                await blocking(partial(_record, sessions, claimed, outcome))
                done[outcome.status] += 1
                if outcome.status == "pending":
                    return  # retried later: the receiver's other events wait with it

    timeout = httpx.Timeout(rules.deadline_s)
    try:
        async with httpx.AsyncClient(timeout=timeout, follow_redirects=False) as client:
            results = await asyncio.gather(*(lane(s) for s in lanes), return_exceptions=True)
    finally:
        threads.shutdown(wait=False, cancel_futures=True)
    for subscription_id, result in zip(lanes, results, strict=True):
        if isinstance(result, Exception):  # one lane's failure (a database error) is its own
            log.error("webhook lane %s failed", subscription_id, exc_info=result)
            done["error"] += 1
    return done


def _claim_next(
    sessions: sessionmaker[Session],
    subscription_id: uuid.UUID,
    *,
    now: datetime,
    rules: DeliveryRules,
) -> _Claimed | None:
    """Lease the subscription's next delivery due at `now` (None: nothing left), so that no
    other dispatcher sends it meanwhile."""
    with sessions.begin() as session:
        delivery = session.scalar(
            select(WebhookDelivery)
            .where(
                WebhookDelivery.subscription_id == subscription_id,
                WebhookDelivery.status == "pending",
                WebhookDelivery.next_attempt_at <= now,
            )
            .order_by(WebhookDelivery.next_attempt_at, WebhookDelivery.id)
            .limit(1)
        )
        if delivery is None:
            return None
        # The lease outlasts the attempt: a claim is only ever retaken from a dispatcher
        # that died.
        lease = timedelta(seconds=rules.deadline_s + LEASE_MARGIN_S)
        claimed = session.execute(
            update(WebhookDelivery)
            .where(
                WebhookDelivery.id == delivery.id,
                WebhookDelivery.status == "pending",
                WebhookDelivery.next_attempt_at <= now,
            )
            .values(next_attempt_at=utcnow() + lease)
        )
        if claimed.rowcount != 1:  # type: ignore[attr-defined]
            return None  # another dispatcher took it first: its lane is theirs now
        subscription = session.get_one(WebhookSubscription, subscription_id)
        body = json.dumps(
            {
                "id": str(delivery.id),
                "event": delivery.event,
                "created_at": delivery.created_at.isoformat(),
            }
            | delivery.payload,
            separators=(",", ":"),
        ).encode()
        return _Claimed(
            id=delivery.id,
            url=subscription.url,
            secret=subscription.secret,
            event=delivery.event,
            attempt=delivery.attempts + 1,
            body=body,
        )


@dataclass(frozen=True)
class _Outcome:
    status: str  # delivered, pending (to be retried) or failed
    code: int | None
    error: str | None
    at: datetime  # when the attempt ended: what delivered_at and the backoff count from


async def _attempt(
    claimed: _Claimed,
    client: httpx.AsyncClient,
    blocking: Callable[[Callable[[], PinnedDestination]], Awaitable[PinnedDestination]],
    *,
    rules: DeliveryRules,
) -> _Outcome:
    """One POST within the deadline: the destination's check (a name lookup), the
    connection, the body and the answer's status line and headers. The answer's body is
    never read: only its status counts."""
    code, error, retry = None, None, False
    try:
        async with asyncio.timeout(rules.deadline_s):
            pinned = await blocking(
                partial(check_destination, claimed.url, allow_private=rules.allow_private)
            )
            request = client.build_request(
                "POST",
                pinned.url,
                content=claimed.body,
                extensions={"sni_hostname": pinned.tls_server_name},
                headers={
                    "Host": pinned.host_header,
                    "Content-Type": "application/json",
                    "X-Shiftaudit-Event": claimed.event,
                    "X-Shiftaudit-Delivery": str(claimed.id),
                    SIGNATURE_HEADER: sign(claimed.secret, int(time.time()), claimed.body),
                },
            )
            response = await client.send(request, stream=True)
            await response.aclose()
        code = response.status_code
        retry = code >= 500 or code == 429
        if not 200 <= code < 300:
            error = f"HTTP {code}"
    except RefusedDestination as refused:
        error = str(refused)
    except TimeoutError:
        error, retry = f"no answer within {rules.deadline_s:g} s (the delivery deadline)", True
    except httpx.HTTPError as failure:
        error, retry = f"{type(failure).__name__}: {failure}", True
    at = utcnow()
    if error is None:
        return _Outcome("delivered", code, None, at)
    log.warning("webhook %s to %s: %s", claimed.id, claimed.url, error)
    status = "pending" if retry and claimed.attempt < MAX_ATTEMPTS else "failed"
    return _Outcome(status, code, error, at)


def _record(sessions: sessionmaker[Session], claimed: _Claimed, outcome: _Outcome) -> None:
    """Write an attempt's outcome; a retry is due its backoff after the attempt ended."""
    values: dict[str, Any] = {
        "status": outcome.status,
        "attempts": claimed.attempt,
        "last_status_code": outcome.code,
        "last_error": outcome.error,
    }
    if outcome.status == "delivered":
        values["delivered_at"] = outcome.at
    elif outcome.status == "pending":
        backoff = timedelta(seconds=min(5 * 2 ** (claimed.attempt - 1), 3600))
        values["next_attempt_at"] = outcome.at + backoff
    with sessions.begin() as session:
        session.execute(
            update(WebhookDelivery).where(WebhookDelivery.id == claimed.id).values(**values)
        )
