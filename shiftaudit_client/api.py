"""Every endpoint of the shiftaudit API as a `Call`: what to send and how to read the answer.

A call is a value; `Client.send` and `AsyncClient.send` run it, so the sync and the async
client share one definition of each endpoint and return the same typed results.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

import httpx
from pydantic import BaseModel, TypeAdapter

from shiftaudit.config import AuditConfig
from shiftaudit.report import Report
from shiftaudit_api.audits import AuditEstimate, AuditOut, AuditStatus, AuditSummary
from shiftaudit_api.common import Identity, Page
from shiftaudit_api.comparisons import ComparisonOut, TrendPoint
from shiftaudit_api.keys import ApiKeyOut, CreatedApiKey, KeyScope
from shiftaudit_api.outbound_webhooks import (
    CreatedSubscription,
    DeliveryOut,
    SubscriptionOut,
    WebhookEvent,
)
from shiftaudit_api.policies import NoRegression, PolicyOut, Threshold
from shiftaudit_api.registry_hooks import (
    HookAccepted,
    HookDefaults,
    MlflowConnectionOut,
    MlflowConnectionSaved,
    MlflowEvent,
)
from shiftaudit_api.uploads import ModelOut, ModelUploaded, ProbeSetOut, ProbeSetUploaded

T = TypeVar("T")
ModelT = TypeVar("ModelT", bound=BaseModel)


@dataclass(frozen=True)
class Upload:
    """A multipart upload: one file, read from disk as it is sent, and text fields."""

    path: Path
    fields: Mapping[str, str]


@dataclass(frozen=True)
class Call(Generic[T]):
    """One request and the parser of its successful answer."""

    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    params: Mapping[str, str | int | float] = field(default_factory=dict)
    json: Any = None
    upload: Upload | None = None


def _model(schema: type[ModelT]) -> Callable[[httpx.Response], ModelT]:
    return lambda response: schema.model_validate_json(response.content)


def _adapter(kind: Any) -> Callable[[httpx.Response], Any]:
    adapter: TypeAdapter[Any] = TypeAdapter(kind)
    return lambda response: adapter.validate_json(response.content)


def _nothing(response: httpx.Response) -> None:
    return None


def _text(response: httpx.Response) -> str:
    return response.text


def _bytes(response: httpx.Response) -> bytes:
    return response.content


def _query(**values: object) -> dict[str, str | int | float]:
    """Query parameters without the unset ones, ids and times as the API spells them."""
    params: dict[str, str | int | float] = {}
    for name, value in values.items():
        if value is None:
            continue
        if isinstance(value, datetime):
            params[name] = value.isoformat()
        elif isinstance(value, int | float | str):
            params[name] = value
        else:
            params[name] = str(value)
    return params


# Operations -----------------------------------------------------------------------------


def me() -> Call[Identity]:
    """The team and scope of the calling key."""
    return Call("GET", "/v1/me", _model(Identity))


def ready() -> Call[dict[str, str]]:
    """Readiness: the database answers and the queue can take audits."""
    return Call("GET", "/readyz", _adapter(dict[str, str]))


# Keys (an admin key's) ------------------------------------------------------------------


def list_keys() -> Call[list[ApiKeyOut]]:
    """The team's keys, revoked and expired ones included; never their secrets."""
    return Call("GET", "/v1/keys", _adapter(list[ApiKeyOut]))


def create_key(
    *, scope: KeyScope, name: str = "", expires_in_s: int | None = None
) -> Call[CreatedApiKey]:
    """A new key for the caller's team; the answer's `key` is shown only this once."""
    body = {"scope": scope, "name": name, "expires_in_s": expires_in_s}
    return Call("POST", "/v1/keys", _model(CreatedApiKey), json=body)


def revoke_key(key_id: str) -> Call[None]:
    """Revoke one of the team's keys (its 16-hex-digit id)."""
    return Call("DELETE", f"/v1/keys/{key_id}", _nothing)


# Models and probe sets ------------------------------------------------------------------


def upload_model(
    path: Path,
    *,
    name: str,
    version: str = "1",
    registry_ref: str | None = None,
    class_names: Sequence[str] | None = None,
) -> Call[ModelUploaded]:
    """Upload an ONNX, TorchScript or torch.export file (deduplicated by content per team)."""
    fields = {"name": name, "version": version}
    if registry_ref is not None:
        fields["registry_ref"] = registry_ref
    if class_names is not None:
        fields["class_names"] = TypeAdapter(list[str]).dump_json(list(class_names)).decode()
    return Call("POST", "/v1/models", _model(ModelUploaded), upload=Upload(path, fields))


def list_models(
    *,
    limit: int = 50,
    cursor: str | None = None,
    name: str | None = None,
    sha256: str | None = None,
) -> Call[Page[ModelOut]]:
    """One keyset page of the team's models, newest first."""
    params = _query(limit=limit, cursor=cursor, name=name, sha256=sha256)
    return Call("GET", "/v1/models", _model(Page[ModelOut]), params)


def get_model(model_id: uuid.UUID) -> Call[ModelOut]:
    return Call("GET", f"/v1/models/{model_id}", _model(ModelOut))


def delete_model(model_id: uuid.UUID) -> Call[None]:
    """Delete a model (409 while audits use it)."""
    return Call("DELETE", f"/v1/models/{model_id}", _nothing)


def upload_probe_set(
    path: Path, *, name: str, class_names: Sequence[str] | None = None
) -> Call[ProbeSetUploaded]:
    """Upload a .zip or .tar(.gz) of images (`shiftaudit.archives.pack_directory` packs a
    directory reproducibly)."""
    fields = {"name": name}
    if class_names is not None:
        fields["class_names"] = TypeAdapter(list[str]).dump_json(list(class_names)).decode()
    return Call("POST", "/v1/probe-sets", _model(ProbeSetUploaded), upload=Upload(path, fields))


def list_probe_sets(
    *,
    limit: int = 50,
    cursor: str | None = None,
    name: str | None = None,
    sha256: str | None = None,
) -> Call[Page[ProbeSetOut]]:
    """One keyset page of the team's probe sets, newest first."""
    params = _query(limit=limit, cursor=cursor, name=name, sha256=sha256)
    return Call("GET", "/v1/probe-sets", _model(Page[ProbeSetOut]), params)


def get_probe_set(probe_set_id: uuid.UUID) -> Call[ProbeSetOut]:
    return Call("GET", f"/v1/probe-sets/{probe_set_id}", _model(ProbeSetOut))


def delete_probe_set(probe_set_id: uuid.UUID) -> Call[None]:
    """Delete a probe set (409 while audits use it)."""
    return Call("DELETE", f"/v1/probe-sets/{probe_set_id}", _nothing)


# Audits ---------------------------------------------------------------------------------


def create_audit(
    *,
    model_id: uuid.UUID,
    probe_set_id: uuid.UUID,
    config: AuditConfig | None = None,
    policies: Sequence[str] = (),
    gpu_type: str | None = None,
    reuse: bool = True,
) -> Call[AuditOut]:
    """Queue an audit (on workers of `gpu_type`, if given); an identical succeeded one is
    returned instead unless `reuse=False`."""
    body = _audit_body(model_id, probe_set_id, config, policies, gpu_type)
    params = _query(reuse=None if reuse else "false")
    return Call("POST", "/v1/audits", _model(AuditOut), params, json=body)


def _audit_body(
    model_id: uuid.UUID,
    probe_set_id: uuid.UUID,
    config: AuditConfig | None,
    policies: Sequence[str],
    gpu_type: str | None,
) -> dict[str, Any]:
    return {
        "model_id": str(model_id),
        "probe_set_id": str(probe_set_id),
        "config": (config or AuditConfig()).model_dump(mode="json"),
        "policies": list(policies),
        "gpu_type": gpu_type,
    }


def list_audits(
    *,
    limit: int = 50,
    cursor: str | None = None,
    status: AuditStatus | None = None,
    model_id: uuid.UUID | None = None,
    model_name: str | None = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
    order: Literal["newest", "oldest"] = "newest",
) -> Call[Page[AuditSummary]]:
    """One keyset page of the team's audits (without their configs: `get_audit` has it)."""
    params = _query(
        limit=limit,
        cursor=cursor,
        status=status,
        model_id=model_id,
        model_name=model_name,
        created_after=created_after,
        created_before=created_before,
        order=order,
    )
    return Call("GET", "/v1/audits", _model(Page[AuditSummary]), params)


def estimate_audit(
    *,
    model_id: uuid.UUID,
    probe_set_id: uuid.UUID,
    config: AuditConfig | None = None,
    policies: Sequence[str] = (),
    gpu_type: str | None = None,
) -> Call[AuditEstimate]:
    """What `create_audit` with these arguments would cost and whether it is allowed now;
    nothing is queued."""
    body = _audit_body(model_id, probe_set_id, config, policies, gpu_type)
    return Call("POST", "/v1/audits/estimate", _model(AuditEstimate), json=body)


def get_audit(audit_id: uuid.UUID) -> Call[AuditOut]:
    """Status, progress, summary and policy verdict."""
    return Call("GET", f"/v1/audits/{audit_id}", _model(AuditOut))


def cancel_audit(audit_id: uuid.UUID) -> Call[AuditOut]:
    return Call("POST", f"/v1/audits/{audit_id}/cancel", _model(AuditOut))


def get_report(audit_id: uuid.UUID) -> Call[Report]:
    """The engine's versioned report (409 until the audit succeeded)."""
    return Call("GET", f"/v1/audits/{audit_id}/report", _model(Report))


def get_report_html(audit_id: uuid.UUID) -> Call[str]:
    """The report as one self-contained HTML file (charts and thumbnails inlined)."""
    return Call("GET", f"/v1/audits/{audit_id}/report.html", _text)


def get_thumbnail(audit_id: uuid.UUID, *, probe: str, dy: float, dx: float) -> Call[bytes]:
    """A probe of the audit shifted by (dy, dx) as the model saw it: PNG bytes."""
    params = _query(probe=probe, dy=dy, dx=dx)
    return Call("GET", f"/v1/audits/{audit_id}/thumbnail", _bytes, params)


# Comparison and lineage -----------------------------------------------------------------


def compare(audit_ids: Sequence[uuid.UUID]) -> Call[ComparisonOut]:
    """Each audit against the first: deltas, intervals, significance."""
    params = _query(audits=",".join(str(a) for a in audit_ids))
    return Call("GET", "/v1/compare", _model(ComparisonOut), params)


def trend(*, model_name: str, probe_set_id: uuid.UUID | None = None) -> Call[list[TrendPoint]]:
    """Every version of a model name, oldest first, with its latest succeeded audit."""
    params = _query(model_name=model_name, probe_set_id=probe_set_id)
    return Call("GET", "/v1/trend", _adapter(list[TrendPoint]), params)


# Policies -------------------------------------------------------------------------------


def create_policy(
    *, name: str, thresholds: Sequence[Threshold] = (), no_regression: NoRegression | None = None
) -> Call[PolicyOut]:
    body = {
        "name": name,
        "thresholds": [t.model_dump(mode="json") for t in thresholds],
        "no_regression": no_regression.model_dump(mode="json") if no_regression else None,
    }
    return Call("POST", "/v1/policies", _model(PolicyOut), json=body)


def list_policies(*, limit: int = 100, after: str | None = None) -> Call[list[PolicyOut]]:
    """The team's policies by name, `limit` of them after the name `after`."""
    params = _query(limit=limit, after=after)
    return Call("GET", "/v1/policies", _adapter(list[PolicyOut]), params)


def get_policy(name: str) -> Call[PolicyOut]:
    return Call("GET", f"/v1/policies/{name}", _model(PolicyOut))


def delete_policy(name: str) -> Call[None]:
    return Call("DELETE", f"/v1/policies/{name}", _nothing)


# Outgoing webhooks ----------------------------------------------------------------------


def create_webhook(*, url: str, events: Sequence[WebhookEvent]) -> Call[CreatedSubscription]:
    """Subscribe a URL; the answer holds the signing secret, shown only this once."""
    body = {"url": url, "events": list(events)}
    return Call("POST", "/v1/webhooks", _model(CreatedSubscription), json=body)


def list_webhooks(
    *, limit: int = 100, after: uuid.UUID | None = None
) -> Call[list[SubscriptionOut]]:
    """The team's subscriptions, oldest first, `limit` of them after the one `after`."""
    params = _query(limit=limit, after=after)
    return Call("GET", "/v1/webhooks", _adapter(list[SubscriptionOut]), params)


def delete_webhook(subscription_id: uuid.UUID) -> Call[None]:
    return Call("DELETE", f"/v1/webhooks/{subscription_id}", _nothing)


def webhook_deliveries(
    subscription_id: uuid.UUID, *, limit: int = 100, before: uuid.UUID | None = None
) -> Call[list[DeliveryOut]]:
    """A subscription's deliveries, newest first, `limit` of them older than `before`."""
    path = f"/v1/webhooks/{subscription_id}/deliveries"
    return Call("GET", path, _adapter(list[DeliveryOut]), _query(limit=limit, before=before))


# Registry hooks -------------------------------------------------------------------------


def set_hook_defaults(
    *,
    probe_set_id: uuid.UUID,
    config: AuditConfig | None = None,
    policies: Sequence[str] = (),
    gpu_type: str | None = None,
) -> Call[HookDefaults]:
    """What registry hooks audit new model versions with."""
    body = HookDefaults(
        probe_set_id=probe_set_id,
        config=config or AuditConfig(),
        policies=[*policies],
        gpu_type=gpu_type,
    )
    path = "/v1/hooks/defaults"
    return Call("PUT", path, _model(HookDefaults), json=body.model_dump(mode="json"))


def get_hook_defaults() -> Call[HookDefaults]:
    return Call("GET", "/v1/hooks/defaults", _model(HookDefaults))


def generic_hook(
    *, model_url: str, name: str, version: str, token: str | None = None
) -> Call[HookAccepted]:
    """Announce a model version on an allow-listed artifact store: fetched and audited."""
    body = {"model_url": model_url, "name": name, "version": version, "token": token}
    return Call("POST", "/v1/hooks/generic", _model(HookAccepted), json=body)


def connect_mlflow(
    *,
    tracking_uri: str,
    events: Sequence[MlflowEvent] = ("model_version.created",),
    tracking_token: str | None = None,
    rotate_secret: bool = False,
) -> Call[MlflowConnectionSaved]:
    """Connect the team's MLflow tracking server; the answer holds the webhook URL and, the
    first time and on rotation, the webhook secret for `MlflowClient().create_webhook`."""
    body = {
        "tracking_uri": tracking_uri,
        "events": list(events),
        "tracking_token": tracking_token,
        "rotate_secret": rotate_secret,
    }
    path = "/v1/hooks/mlflow/connection"
    return Call("PUT", path, _model(MlflowConnectionSaved), json=body)


def get_mlflow_connection() -> Call[MlflowConnectionOut]:
    return Call("GET", "/v1/hooks/mlflow/connection", _model(MlflowConnectionOut))


def delete_mlflow_connection() -> Call[None]:
    """Disconnect: MLflow's deliveries for the team are refused from now on."""
    return Call("DELETE", "/v1/hooks/mlflow/connection", _nothing)
