"""Data access for webhook subscriptions and their deliveries, scoped to one team."""

from __future__ import annotations

import uuid

from sqlalchemy import and_, or_, select
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


def team_subscriptions(
    session: Session, team_id: uuid.UUID, *, limit: int, after: uuid.UUID | None
) -> list[WebhookSubscription]:
    """The team's subscriptions, oldest first, `limit` of them after the one `after`."""
    query = select(WebhookSubscription).where(WebhookSubscription.team_id == team_id)
    if after is not None:
        last = team_subscription(session, team_id, after)
        query = query.where(
            or_(
                WebhookSubscription.created_at > last.created_at,
                and_(
                    WebhookSubscription.created_at == last.created_at,
                    WebhookSubscription.id > last.id,
                ),
            )
        )
    ordered = query.order_by(WebhookSubscription.created_at, WebhookSubscription.id)
    return list(session.scalars(ordered.limit(limit)))


def latest_deliveries(
    session: Session,
    team_id: uuid.UUID,
    subscription_id: uuid.UUID,
    *,
    limit: int,
    before: uuid.UUID | None,
) -> list[WebhookDelivery]:
    """The deliveries of one of the team's subscriptions, newest first, `limit` of them
    older than the one `before`."""
    subscription = team_subscription(session, team_id, subscription_id)
    query = select(WebhookDelivery).where(WebhookDelivery.subscription_id == subscription.id)
    if before is not None:
        last = session.get(WebhookDelivery, before)
        if last is None or last.subscription_id != subscription.id:
            raise NotFound("before: no delivery with this id for this webhook")
        query = query.where(
            or_(
                WebhookDelivery.created_at < last.created_at,
                and_(
                    WebhookDelivery.created_at == last.created_at,
                    WebhookDelivery.id < last.id,
                ),
            )
        )
    ordered = query.order_by(WebhookDelivery.created_at.desc(), WebhookDelivery.id.desc())
    return list(session.scalars(ordered.limit(limit)))
