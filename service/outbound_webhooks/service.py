"""Subscribing a team's URL to audit events, and unsubscribing it."""

from __future__ import annotations

import uuid

from sqlalchemy.orm import Session

from service.errors import Invalid
from service.outbound_webhooks.destinations import RefusedDestination, check_destination
from service.outbound_webhooks.outbox import new_secret
from service.outbound_webhooks.repository import team_subscription
from service.outbound_webhooks.tables import WebhookSubscription
from shiftaudit_api.outbound_webhooks import CreatedSubscription, SubscriptionIn


def subscribe(
    *, session: Session, team_id: uuid.UUID, body: SubscriptionIn, allow_private: bool
) -> CreatedSubscription:
    """Store a subscription after checking where its URL leads; the secret is shown once."""
    try:
        check_destination(body.url, allow_private=allow_private)
    except RefusedDestination as refused:
        raise Invalid(f"url: {refused}") from None
    row = WebhookSubscription(
        team_id=team_id, url=body.url, events=list(body.events), secret=new_secret()
    )
    session.add(row)
    session.commit()
    return CreatedSubscription(
        id=row.id, url=row.url, events=row.events, created_at=row.created_at, secret=row.secret
    )


def unsubscribe(*, session: Session, team_id: uuid.UUID, subscription_id: uuid.UUID) -> None:
    """Delete one of the team's subscriptions and its delivery log."""
    session.delete(team_subscription(session, team_id, subscription_id))
    session.commit()
