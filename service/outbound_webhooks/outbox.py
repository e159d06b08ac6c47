"""Events into the outbox, in the transaction that changes the audit's state; sent later.

Writing the delivery rows with the state change means an event is never lost (the change
commits with it) nor sent for a change that rolled back.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import secrets
import time
from collections import Counter
from datetime import datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from service.audits.tables import Audit
from service.outbound_webhooks.destinations import RefusedDestination, check_destination
from service.outbound_webhooks.tables import WebhookDelivery, WebhookSubscription
from shiftaudit_api.audits import AuditStatus

log = logging.getLogger(__name__)
MAX_ATTEMPTS = 8
TIMEOUT_S = 10.0
LEASE = timedelta(seconds=60)  # a claimed delivery is not sent again by another dispatcher
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


def dispatch_due(
    sessions: sessionmaker[Session], *, now: datetime, allow_private: bool
) -> Counter[str]:
    """Send every delivery that is due; returns outcomes by kind."""
    done: Counter[str] = Counter()
    with sessions() as session:
        due = session.scalars(
            select(WebhookDelivery.id)
            .where(WebhookDelivery.status == "pending", WebhookDelivery.next_attempt_at <= now)
            .order_by(WebhookDelivery.next_attempt_at)
            .limit(100)
        ).all()
    with httpx.Client(timeout=TIMEOUT_S, follow_redirects=False) as client:
        for delivery_id in due:
            done[_deliver(sessions, client, delivery_id, now=now, allow_private=allow_private)] += 1
    return done


def _deliver(
    sessions: sessionmaker[Session],
    client: httpx.Client,
    delivery_id: Any,
    *,
    now: datetime,
    allow_private: bool,
) -> str:
    with sessions.begin() as session:
        claimed = session.execute(
            update(WebhookDelivery)
            .where(
                WebhookDelivery.id == delivery_id,
                WebhookDelivery.status == "pending",
                WebhookDelivery.next_attempt_at <= now,
            )
            .values(next_attempt_at=now + LEASE)
        )
        if claimed.rowcount != 1:  # type: ignore[attr-defined]
            return "taken"
        delivery = session.get_one(WebhookDelivery, delivery_id)
        subscription = session.get_one(WebhookSubscription, delivery.subscription_id)
        url, secret, event = subscription.url, subscription.secret, delivery.event
        attempt = delivery.attempts + 1
        body = json.dumps(
            {"id": str(delivery.id), "event": event, "created_at": delivery.created_at.isoformat()}
            | delivery.payload,
            separators=(",", ":"),
        ).encode()
    code, error, retry = None, None, False
    try:
        pinned = check_destination(url, allow_private=allow_private)
        response = client.post(
            pinned.url,
            content=body,
            extensions={"sni_hostname": pinned.tls_server_name},
            headers={
                "Host": pinned.host_header,
                "Content-Type": "application/json",
                "X-Shiftaudit-Event": event,
                "X-Shiftaudit-Delivery": str(delivery_id),
                SIGNATURE_HEADER: sign(secret, int(time.time()), body),
            },
        )
        code = response.status_code
        retry = code >= 500 or code == 429
        if not 200 <= code < 300:
            error = f"HTTP {code}"
    except RefusedDestination as refused:
        error = str(refused)
    except httpx.HTTPError as failure:
        error, retry = f"{type(failure).__name__}: {failure}", True
    if error is None:
        outcome: dict[str, Any] = {"status": "delivered", "delivered_at": now}
    elif retry and attempt < MAX_ATTEMPTS:
        backoff = timedelta(seconds=min(5 * 2 ** (attempt - 1), 3600))
        outcome = {"status": "pending", "next_attempt_at": now + backoff}
    else:
        outcome = {"status": "failed"}
    with sessions.begin() as session:
        session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.id == delivery_id)
            .values(attempts=attempt, last_status_code=code, last_error=error, **outcome)
        )
    if error is not None:
        log.warning("webhook %s to %s: %s", delivery_id, url, error)
    return str(outcome["status"])
