"""/v1/webhooks: the team's subscriptions to audit events, and their delivery log."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from service.deps import Admin, Reader, SessionDep, SettingsDep
from service.guard import GuardedRoute
from service.outbound_webhooks import service
from service.outbound_webhooks.repository import latest_deliveries, team_subscriptions
from service.pagination import next_page_link
from shiftaudit_api.outbound_webhooks import (
    CreatedSubscription,
    DeliveryOut,
    SubscriptionIn,
    SubscriptionOut,
)

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"], route_class=GuardedRoute)


@router.post("", status_code=201)
def subscribe(
    body: SubscriptionIn, principal: Admin, session: SessionDep, settings: SettingsDep
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
def list_subscriptions(
    principal: Reader,
    session: SessionDep,
    request: Request,
    response: Response,
    limit: Annotated[int, Query(ge=1, le=200)] = 100,
    after: Annotated[uuid.UUID | None, Query(description="the last subscription seen")] = None,
) -> list[SubscriptionOut]:
    """The team's subscriptions, oldest first, a page at a time (`Link` rel="next")."""
    rows = team_subscriptions(session, principal.team_id, limit=limit + 1, after=after)
    if len(rows) > limit:
        response.headers.update(next_page_link(request, after=str(rows[limit - 1].id)))
    return [SubscriptionOut.model_validate(row) for row in rows[:limit]]


@router.delete("/{subscription_id}", status_code=204)
def unsubscribe(subscription_id: uuid.UUID, principal: Admin, session: SessionDep) -> None:
    service.unsubscribe(session=session, team_id=principal.team_id, subscription_id=subscription_id)


@router.get("/{subscription_id}/deliveries")
def deliveries(
    subscription_id: uuid.UUID,
    principal: Reader,
    session: SessionDep,
    request: Request,
    response: Response,
    limit: Annotated[int, Query(ge=1, le=200)] = 100,
    before: Annotated[uuid.UUID | None, Query(description="the last delivery seen")] = None,
) -> list[DeliveryOut]:
    """The delivery log, newest first, a page at a time (`Link` rel="next")."""
    rows = latest_deliveries(
        session, principal.team_id, subscription_id, limit=limit + 1, before=before
    )
    if len(rows) > limit:
        response.headers.update(next_page_link(request, before=str(rows[limit - 1].id)))
    return [DeliveryOut.model_validate(row) for row in rows[:limit]]
