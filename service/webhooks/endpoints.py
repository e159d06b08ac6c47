"""/v1/webhooks: subscriptions to audit events, and their delivery log."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from service.deps import Reader, SessionDep, SettingsDep, Writer
from service.webhooks.destinations import RefusedDestination, check_destination
from service.webhooks.models import WebhookDelivery, WebhookSubscription
from service.webhooks.outbox import new_secret

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])
Event = Literal["audit.succeeded", "audit.failed", "audit.policy_failed"]


class SubscriptionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(max_length=2000)
    events: list[Event] = Field(min_length=1)


class SubscriptionOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    url: str
    events: list[str]
    created_at: datetime


class CreatedSubscription(SubscriptionOut):
    secret: str = Field(description="HMAC-SHA256 key of X-Shiftaudit-Signature; shown only now")


class DeliveryOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    event: str
    status: str = Field(description="pending, delivered or failed")
    attempts: int
    last_status_code: int | None
    last_error: str | None
    created_at: datetime
    next_attempt_at: datetime
    delivered_at: datetime | None


def _team_subscription(
    session: Session, team_id: uuid.UUID, subscription_id: uuid.UUID
) -> WebhookSubscription:
    row = session.scalar(
        select(WebhookSubscription).where(
            WebhookSubscription.id == subscription_id, WebhookSubscription.team_id == team_id
        )
    )
    if row is None:
        raise HTTPException(404, "no webhook with this id in your team")
    return row


@router.post("", status_code=201)
def subscribe(
    body: SubscriptionIn, principal: Writer, session: SessionDep, settings: SettingsDep
) -> CreatedSubscription:
    """Subscribe a URL to events. Each delivery is a JSON POST signed with the secret:
    `X-Shiftaudit-Signature: t=<unix>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>`."""
    try:
        check_destination(body.url, allow_private=settings.webhook_allow_private)
    except RefusedDestination as refused:
        raise HTTPException(422, f"url: {refused}") from None
    row = WebhookSubscription(
        team_id=principal.team_id, url=body.url, events=list(body.events), secret=new_secret()
    )
    session.add(row)
    session.commit()
    return CreatedSubscription(
        id=row.id, url=row.url, events=row.events, created_at=row.created_at, secret=row.secret
    )


@router.get("")
def list_subscriptions(principal: Reader, session: SessionDep) -> list[SubscriptionOut]:
    rows = session.scalars(
        select(WebhookSubscription)
        .where(WebhookSubscription.team_id == principal.team_id)
        .order_by(WebhookSubscription.created_at)
    )
    return [SubscriptionOut.model_validate(row) for row in rows]


@router.delete("/{subscription_id}", status_code=204)
def unsubscribe(subscription_id: uuid.UUID, principal: Writer, session: SessionDep) -> None:
    session.delete(_team_subscription(session, principal.team_id, subscription_id))
    session.commit()


@router.get("/{subscription_id}/deliveries")
def deliveries(
    subscription_id: uuid.UUID, principal: Reader, session: SessionDep
) -> list[DeliveryOut]:
    """The latest 100 deliveries, newest first: the delivery log."""
    subscription = _team_subscription(session, principal.team_id, subscription_id)
    rows = session.scalars(
        select(WebhookDelivery)
        .where(WebhookDelivery.subscription_id == subscription.id)
        .order_by(WebhookDelivery.created_at.desc(), WebhookDelivery.id.desc())
        .limit(100)
    )
    return [DeliveryOut.model_validate(row) for row in rows]
