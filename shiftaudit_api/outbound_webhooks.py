"""Bodies of /v1/webhooks: outbound notifications of audit events to the team's own URLs.

(Inbound calls from model registries are `registry_hooks`.)
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

WebhookEvent = Literal["audit.succeeded", "audit.failed", "audit.policy_failed"]
WEBHOOK_EVENTS: tuple[str, ...] = get_args(WebhookEvent)


class SubscriptionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(max_length=2000)
    events: list[WebhookEvent] = Field(min_length=1)


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
