"""/v1/webhooks: the team's subscriptions to audit events, and their delivery log."""

from __future__ import annotations

import uuid

from fastapi import APIRouter

from service.deps import Reader, SessionDep, SettingsDep, Writer
from service.outbound_webhooks import service
from service.outbound_webhooks.repository import latest_deliveries, team_subscriptions
from shiftaudit_api.outbound_webhooks import (
    CreatedSubscription,
    DeliveryOut,
    SubscriptionIn,
    SubscriptionOut,
)

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])


@router.post("", status_code=201)
def subscribe(
    body: SubscriptionIn, principal: Writer, session: SessionDep, settings: SettingsDep
) -> CreatedSubscription:
    """Subscribe a URL to events. Each delivery is a JSON POST signed with the secret:
    `X-Shiftaudit-Signature: t=<unix>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>`."""
    return service.subscribe(
        session=session,
        team_id=principal.team_id,
        body=body,
        allow_private=settings.webhook_allow_private,
    )


@router.get("")
def list_subscriptions(principal: Reader, session: SessionDep) -> list[SubscriptionOut]:
    return [
        SubscriptionOut.model_validate(r) for r in team_subscriptions(session, principal.team_id)
    ]


@router.delete("/{subscription_id}", status_code=204)
def unsubscribe(subscription_id: uuid.UUID, principal: Writer, session: SessionDep) -> None:
    service.unsubscribe(session=session, team_id=principal.team_id, subscription_id=subscription_id)


@router.get("/{subscription_id}/deliveries")
def deliveries(
    subscription_id: uuid.UUID, principal: Reader, session: SessionDep
) -> list[DeliveryOut]:
    """The latest 100 deliveries, newest first: the delivery log."""
    rows = latest_deliveries(session, principal.team_id, subscription_id, limit=100)
    return [DeliveryOut.model_validate(row) for row in rows]
