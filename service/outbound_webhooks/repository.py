"""Data access for webhook subscriptions and their deliveries, scoped to one team."""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.errors import NotFound
from service.outbound_webhooks.tables import WebhookDelivery, WebhookSubscription


def team_subscription(
    session: Session, team_id: uuid.UUID, subscription_id: uuid.UUID
) -> WebhookSubscription:
    """The team's subscription; NotFound otherwise."""
    row = session.scalar(
        select(WebhookSubscription).where(
            WebhookSubscription.id == subscription_id, WebhookSubscription.team_id == team_id
        )
    )
    if row is None:
        raise NotFound("no webhook with this id in your team")
    return row


def team_subscriptions(session: Session, team_id: uuid.UUID) -> list[WebhookSubscription]:
    """The team's subscriptions, oldest first."""
    return list(
        session.scalars(
            select(WebhookSubscription)
            .where(WebhookSubscription.team_id == team_id)
            .order_by(WebhookSubscription.created_at)
        )
    )


def latest_deliveries(
    session: Session, team_id: uuid.UUID, subscription_id: uuid.UUID, *, limit: int
) -> list[WebhookDelivery]:
    """The newest deliveries of one of the team's subscriptions."""
    subscription = team_subscription(session, team_id, subscription_id)
    return list(
        session.scalars(
            select(WebhookDelivery)
            .where(WebhookDelivery.subscription_id == subscription.id)
            .order_by(WebhookDelivery.created_at.desc(), WebhookDelivery.id.desc())
            .limit(limit)
        )
    )
