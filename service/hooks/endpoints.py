"""/v1/hooks: team defaults, and the generic registry hook."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
from fastapi import APIRouter, HTTPException, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from service.audits.schemas import AuditOut
from service.audits.service import add_audit, dispatch
from service.classifiers.endpoints import register_model
from service.classifiers.models import ModelFile
from service.classifiers.schemas import ModelUploaded
from service.deps import Reader, SessionDep, SettingsDep, Writer
from service.hooks.models import HookDefaults
from service.policies.repository import team_policies
from service.probe_sets.models import ProbeSetFile
from service.storage import ArtifactStorage, ArtifactTooLarge
from service.stored_files import TeamFiles
from shiftaudit.config import AuditConfig

router = APIRouter(prefix="/v1/hooks", tags=["hooks"])
FETCH_TIMEOUT_S = 60.0


class Defaults(BaseModel):
    model_config = ConfigDict(extra="forbid")

    probe_set_id: uuid.UUID
    config: AuditConfig = Field(default_factory=AuditConfig)
    policies: list[str] = Field(default_factory=list, max_length=20)


class GenericHook(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model_url: str = Field(max_length=2000, description="on an allow-listed artifact store")
    name: str = Field(min_length=1, max_length=200)
    version: str = Field(min_length=1, max_length=100)
    token: str | None = Field(None, max_length=4000, description="bearer token for the store")


class HookAccepted(BaseModel):
    model: ModelUploaded
    audit: AuditOut


@router.put("/defaults")
def set_defaults(body: Defaults, principal: Writer, session: SessionDep) -> Defaults:
    """What hooks audit new model versions with: probe set, config and policies."""
    if TeamFiles(session, principal.team_id, ProbeSetFile).get(body.probe_set_id) is None:
        raise HTTPException(404, f"no probe set with id {body.probe_set_id} in your team")
    team_policies(session, principal.team_id, body.policies)  # they must exist now
    session.merge(
        HookDefaults(
            team_id=principal.team_id,
            probe_set_id=body.probe_set_id,
            config=body.config.model_dump(mode="json"),
            policies=body.policies,
        )
    )
    session.commit()
    return body


@router.get("/defaults")
def get_defaults(principal: Reader, session: SessionDep) -> Defaults:
    row = session.get(HookDefaults, principal.team_id)
    if row is None:
        raise HTTPException(404, "no hook defaults set: PUT /v1/hooks/defaults first")
    return Defaults(probe_set_id=row.probe_set_id, config=row.config, policies=row.policies)


@router.post("/generic", status_code=202)
def generic_hook(
    body: GenericHook,
    request: Request,
    response: Response,
    principal: Writer,
    session: SessionDep,
    settings: SettingsDep,
) -> HookAccepted:
    """A registry without MLflow announces a model version: the model is fetched from an
    allow-listed artifact store (with the bearer token, if given), registered, and audited
    with the team's hook defaults."""
    defaults = session.get(HookDefaults, principal.team_id)
    if defaults is None:
        raise HTTPException(409, "no hook defaults set: PUT /v1/hooks/defaults first")
    if not any(body.model_url.startswith(p) for p in settings.hook_artifact_prefixes):
        raise HTTPException(422, f"model_url: {body.model_url} is not on an allowed artifact store")
    storage: ArtifactStorage = request.app.state.storage
    limit = settings.max_model_bytes
    headers = {"Authorization": f"Bearer {body.token}"} if body.token else {}
    try:
        with (
            httpx.Client(timeout=FETCH_TIMEOUT_S, follow_redirects=False) as client,
            client.stream("GET", body.model_url, headers=headers) as fetched,
        ):
            if fetched.status_code != 200:
                raise HTTPException(
                    502, f"the artifact store answered {fetched.status_code} for {body.model_url}"
                )
            artifact = storage.put_stream(_chunks(fetched), max_bytes=limit)
    except httpx.HTTPError as error:
        raise HTTPException(502, f"fetching {body.model_url}: {error}") from None
    except ArtifactTooLarge:
        raise HTTPException(413, f"the model is larger than the {limit}-byte limit") from None
    model = register_model(
        session,
        storage,
        principal.team_id,
        artifact,
        {"name": body.name, "version": body.version, "registry_ref": body.model_url},
        body.model_url.rsplit("/", 1)[-1],
        response,
    )
    probe_set = TeamFiles(session, principal.team_id, ProbeSetFile).get(defaults.probe_set_id)
    assert probe_set is not None  # RESTRICT: a defaults' probe set cannot be deleted
    audit = add_audit(
        session=session,
        team_id=principal.team_id,
        model=session.get_one(ModelFile, model.id),
        probe_set=probe_set,
        config=AuditConfig.model_validate(defaults.config),
        policies=team_policies(session, principal.team_id, defaults.policies),
        shard_probes=settings.shard_probes,
    )
    out = AuditOut.model_validate(audit)
    session.commit()
    dispatch(session=session, queue=request.app.state.queue, audit=audit)
    response.status_code = 202
    response.headers["Location"] = f"/v1/audits/{audit.id}"
    return HookAccepted(model=model, audit=out)


def _chunks(fetched: httpx.Response) -> Iterator[bytes]:
    yield from fetched.iter_bytes(1 << 20)
