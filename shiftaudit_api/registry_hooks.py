"""Bodies of /v1/hooks: inbound calls from model registries that queue audits of new versions.

(Outbound notifications to the team's own URLs are `outbound_webhooks`.)
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from shiftaudit_api.audits import AuditOut, AuditRequest
from shiftaudit_api.uploads import ModelUploaded

# The model-registry events that name a model version (MLflow 3's webhook events).
MlflowEvent = Literal[
    "model_version.created", "model_version_alias.created", "model_version_tag.set"
]
MLFLOW_CREATED: MlflowEvent = "model_version.created"


class HookDefaults(AuditRequest):
    """What the team's registry hooks audit each new model version with."""

    probe_set_id: uuid.UUID


class GenericHook(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model_url: str = Field(max_length=2000, description="on an allow-listed artifact store")
    name: str = Field(min_length=1, max_length=200)
    version: str = Field(min_length=1, max_length=100)
    token: str | None = Field(None, max_length=4000, description="bearer token for the store")


class HookAccepted(BaseModel):
    model: ModelUploaded
    audit: AuditOut


class MlflowConnectionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tracking_uri: str = Field(
        max_length=2000,
        description="base URL of the MLflow tracking server, under one of the operator's "
        "SHIFTAUDIT_HOOK_ARTIFACT_PREFIXES",
    )
    events: list[MlflowEvent] = Field(
        default_factory=lambda: [MLFLOW_CREATED],
        min_length=1,
        max_length=3,
        description="webhook events that queue an audit; others are acknowledged and ignored",
    )
    tracking_token: str | None = Field(
        None,
        max_length=4000,
        description="bearer token for the tracking server; stored to be sent, never returned",
    )
    rotate_secret: bool = Field(
        False, description="derive a new webhook secret (the old one stops verifying at once)"
    )


class MlflowConnectionOut(BaseModel):
    tracking_uri: str
    events: list[str]
    has_tracking_token: bool = Field(description="the token itself is never returned")
    webhook_url: str = Field(description="the URL to give MlflowClient().create_webhook")
    created_at: datetime
    updated_at: datetime


class MlflowConnectionSaved(MlflowConnectionOut):
    secret: str | None = Field(
        description="the webhook secret for MlflowClient().create_webhook(secret=...): shown "
        "on the first PUT and with rotate_secret only, null otherwise"
    )


class MlflowPayload(BaseModel):
    """The envelope of every MLflow webhook delivery."""

    entity: str = Field(max_length=100)
    action: str = Field(max_length=100)
    data: dict[str, Any]


class MlflowVersionRef(BaseModel):
    """The model version a selected event names (its `data`)."""

    name: str = Field(min_length=1, max_length=1000)
    version: str = Field(min_length=1, max_length=100)


class MlflowIgnored(BaseModel):
    ignored: str = Field(description="why the delivery queued no audit")
