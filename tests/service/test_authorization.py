"""Who may call what: every /v1 route and method x every kind of caller, on both databases.

The routes come from the app itself, so an endpoint added without a row in MATRIX fails here.
Callers: no key (and an unknown key) -> 401; team beta's admin key on team alpha's resource
-> 404 (another team's resources do not exist for it); alpha's read key on a write endpoint
and its write key on an admin one (keys, policies, webhooks, hook settings) -> 403;
otherwise the endpoint's success status. Audits are handed to a recording queue, so
nothing runs: authorization is decided before anything is queued.
"""

from __future__ import annotations

import io
import uuid
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from fastapi.routing import APIRoute, iter_route_contexts
from fastapi.testclient import TestClient
from sqlalchemy import select

from service.app import create_app
from service.audits.tables import AuditReport
from service.settings import Settings
from service.teams.repository import create_key
from service.teams.tables import Scope, Team
from shiftaudit.config import AuditConfig
from shiftaudit.engine import run_audit

from ..nets import GlobalPoolNet, export_program, noise_probes
from .conftest import PEPPER, RecordingQueue, record_audits

CONFIG = {
    "preprocess": {"input_size": [16, 16], "resize": 16},
    "sweep": {"mode": "zero", "max_shift": 1},
    "runtime": {"batch_size": 4, "device": "cpu"},
    "bootstrap": 10,
}
CALLERS = ("no key", "unknown key", "other team's admin", "read", "write", "admin")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Two models and two probe sets: one of each stays, the others are for deleting."""
    root = tmp_path_factory.mktemp("authz-inputs")
    files = {}
    for seed in (1, 2):
        model = export_program(GlobalPoolNet(seed=seed), root / f"model{seed}.pt2")
        probes = noise_probes(root / f"probes{seed}", 2, seed=seed)
        archive = io.BytesIO()
        with zipfile.ZipFile(archive, "w") as bundle:
            for path in sorted(probes.iterdir()):
                bundle.write(path, path.name)
        files[seed] = (model.read_bytes(), archive.getvalue())
    return files


@pytest.fixture(scope="module")
def report(tmp_path_factory, inputs):
    """A real report of the first model and probe set, stored as if its audit had run."""
    root = tmp_path_factory.mktemp("authz-report")
    (root / "model.pt2").write_bytes(inputs[1][0])
    (root / "probes.zip").write_bytes(inputs[1][1])
    config = AuditConfig.model_validate(CONFIG)
    return run_audit(root / "model.pt2", root / "probes.zip", config).model_dump(mode="json")


@dataclass
class World:
    """Team alpha's resources and every caller's headers."""

    client: TestClient
    app: Any
    inputs: dict[int, tuple[bytes, bytes]]
    headers: dict[str, dict[str, str]]
    model_id: str = ""
    team_id: str = ""  # alpha's
    probe_set_id: str = ""
    audit_id: str = ""
    alpha_ids: set[str] = field(default_factory=set)
    audits_created: int = 0
    policies_created: int = 0

    def upload_model(self, seed: int) -> str:
        response = self.client.post(
            "/v1/models",
            headers=self.headers["write"],
            data={"name": f"m{seed}"},
            files={"file": ("model.pt2", self.inputs[seed][0])},
        )
        assert response.status_code in (200, 201), response.text
        return self._remember(response.json()["id"])

    def upload_probe_set(self, seed: int) -> str:
        response = self.client.post(
            "/v1/probe-sets",
            headers=self.headers["write"],
            data={"name": f"p{seed}"},
            files={"file": ("probes.zip", self.inputs[seed][1])},
        )
        assert response.status_code in (200, 201), response.text
        return self._remember(response.json()["id"])

    def create_audit(self) -> str:
        response = self.client.post(
            "/v1/audits", headers=self.headers["write"], json=self.audit_body()
        )
        assert response.status_code == 202, response.text
        self.audits_created += 1
        return self._remember(response.json()["id"])

    def create_policy(self) -> str:
        self.policies_created += 1
        name = f"policy-{self.policies_created}"
        response = self.client.post(
            "/v1/policies", headers=self.headers["admin"], json=policy_body(name)
        )
        assert response.status_code == 201, response.text
        return name

    def create_webhook(self) -> str:
        response = self.client.post("/v1/webhooks", headers=self.headers["admin"], json=HOOK)
        assert response.status_code == 201, response.text
        return self._remember(response.json()["id"])

    def create_key(self) -> str:
        """A fresh key of alpha's, by its public id (revoking it consumes it)."""
        with self.app.state.sessions.begin() as session:
            alpha = session.scalars(select(Team).where(Team.name == "alpha")).one()
            row, _ = create_key(session, team=alpha, scope=Scope.READ, pepper=PEPPER)
        return self._remember(row.key_id)

    def audit_body(self) -> dict[str, Any]:
        return {"model_id": self.model_id, "probe_set_id": self.probe_set_id, "config": CONFIG}

    def _remember(self, row_id: str) -> str:
        self.alpha_ids.add(row_id)
        return row_id


@dataclass(frozen=True)
class Row:
    """One endpoint: the scope it needs, its success statuses, and how to call it.

    `request` builds (path, httpx keyword arguments), making fresh resources where the call
    consumes them. `tenant_scoped`: it names one of alpha's resources, so beta gets 404;
    otherwise beta's call succeeds on beta's own (empty) team.
    """

    scope: Scope
    ok: frozenset[int]
    request: Callable[[World], tuple[str, dict[str, Any]]]
    tenant_scoped: bool


# Loopback: the world's settings allow private destinations (nothing is ever delivered).
HOOK = {"url": "http://127.0.0.1:9/hook", "events": ["audit.succeeded"]}
# The world's one allowed tracking server (never reached); the generic hook's URL is not under it.
MLFLOW = "http://127.0.0.1:9/mlflow"


def policy_body(name: str) -> dict[str, Any]:
    return {"name": name, "thresholds": [{"metric": "consistency", "op": ">=", "value": 0.9}]}


def _model_upload(world: World) -> tuple[str, dict[str, Any]]:
    model = world.inputs[1][0]
    return "/v1/models", {"data": {"name": "m"}, "files": {"file": ("m.pt2", model)}}


def _probe_set_upload(world: World) -> tuple[str, dict[str, Any]]:
    probes = world.inputs[1][1]
    return "/v1/probe-sets", {"data": {"name": "p"}, "files": {"file": ("p.zip", probes)}}


MATRIX: dict[tuple[str, str], Row] = {
    ("GET", "/v1/me"): Row(Scope.READ, frozenset({200}), lambda w: ("/v1/me", {}), False),
    # The team's own keys: beta lists and makes its own; alpha's key ids are 404 for it.
    ("GET", "/v1/keys"): Row(Scope.ADMIN, frozenset({200}), lambda w: ("/v1/keys", {}), False),
    ("POST", "/v1/keys"): Row(
        Scope.ADMIN, frozenset({201}), lambda w: ("/v1/keys", {"json": {"scope": "read"}}), False
    ),
    ("DELETE", "/v1/keys/{key_id}"): Row(
        Scope.ADMIN, frozenset({204}), lambda w: (f"/v1/keys/{w.create_key()}", {}), True
    ),
    ("POST", "/v1/models"): Row(Scope.WRITE, frozenset({200, 201}), _model_upload, False),
    ("GET", "/v1/models"): Row(Scope.READ, frozenset({200}), lambda w: ("/v1/models", {}), False),
    ("GET", "/v1/models/{model_id}"): Row(
        Scope.READ, frozenset({200}), lambda w: (f"/v1/models/{w.model_id}", {}), True
    ),
    ("DELETE", "/v1/models/{model_id}"): Row(
        Scope.WRITE, frozenset({204}), lambda w: (f"/v1/models/{w.upload_model(2)}", {}), True
    ),
    ("POST", "/v1/probe-sets"): Row(Scope.WRITE, frozenset({200, 201}), _probe_set_upload, False),
    ("GET", "/v1/probe-sets"): Row(
        Scope.READ, frozenset({200}), lambda w: ("/v1/probe-sets", {}), False
    ),
    ("GET", "/v1/probe-sets/{probe_set_id}"): Row(
        Scope.READ, frozenset({200}), lambda w: (f"/v1/probe-sets/{w.probe_set_id}", {}), True
    ),
    ("DELETE", "/v1/probe-sets/{probe_set_id}"): Row(
        Scope.WRITE,
        frozenset({204}),
        lambda w: (f"/v1/probe-sets/{w.upload_probe_set(2)}", {}),
        True,
    ),
    # Beta naming alpha's model and probe set: 404, as for any other alpha resource.
    ("POST", "/v1/audits"): Row(
        Scope.WRITE, frozenset({202}), lambda w: ("/v1/audits", {"json": w.audit_body()}), True
    ),
    ("POST", "/v1/audits/estimate"): Row(
        Scope.WRITE,
        frozenset({200}),
        lambda w: ("/v1/audits/estimate", {"json": w.audit_body()}),
        True,
    ),
    ("GET", "/v1/audits"): Row(Scope.READ, frozenset({200}), lambda w: ("/v1/audits", {}), False),
    ("GET", "/v1/audits/{audit_id}"): Row(
        Scope.READ, frozenset({200}), lambda w: (f"/v1/audits/{w.audit_id}", {}), True
    ),
    ("POST", "/v1/audits/{audit_id}/cancel"): Row(
        Scope.WRITE, frozenset({200}), lambda w: (f"/v1/audits/{w.create_audit()}/cancel", {}), True
    ),
    ("POST", "/v1/policies"): Row(
        Scope.ADMIN,
        frozenset({201}),
        lambda w: ("/v1/policies", {"json": policy_body(f"new-{uuid.uuid4().hex[:8]}")}),
        False,
    ),
    ("GET", "/v1/policies"): Row(
        Scope.READ, frozenset({200}), lambda w: ("/v1/policies", {}), False
    ),
    ("GET", "/v1/policies/{name}"): Row(
        Scope.READ, frozenset({200}), lambda w: (f"/v1/policies/{w.create_policy()}", {}), True
    ),
    ("DELETE", "/v1/policies/{name}"): Row(
        Scope.ADMIN, frozenset({204}), lambda w: (f"/v1/policies/{w.create_policy()}", {}), True
    ),
    ("POST", "/v1/webhooks"): Row(
        Scope.ADMIN, frozenset({201}), lambda w: ("/v1/webhooks", {"json": HOOK}), False
    ),
    ("GET", "/v1/webhooks"): Row(
        Scope.READ, frozenset({200}), lambda w: ("/v1/webhooks", {}), False
    ),
    ("DELETE", "/v1/webhooks/{subscription_id}"): Row(
        Scope.ADMIN, frozenset({204}), lambda w: (f"/v1/webhooks/{w.create_webhook()}", {}), True
    ),
    ("GET", "/v1/webhooks/{subscription_id}/deliveries"): Row(
        Scope.READ,
        frozenset({200}),
        lambda w: (f"/v1/webhooks/{w.create_webhook()}/deliveries", {}),
        True,
    ),
    ("GET", "/v1/trend"): Row(
        Scope.READ, frozenset({200}), lambda w: ("/v1/trend?model_name=m", {}), False
    ),
    ("PUT", "/v1/hooks/defaults"): Row(
        Scope.ADMIN,
        frozenset({200}),
        lambda w: ("/v1/hooks/defaults", {"json": {"probe_set_id": w.probe_set_id}}),
        True,
    ),
    # Until defaults are set, a caller who may read them gets 404 (none yet).
    ("GET", "/v1/hooks/defaults"): Row(
        Scope.READ, frozenset({200, 404}), lambda w: ("/v1/hooks/defaults", {}), False
    ),
    # No artifact store is allowed in the world: an authorised call gets as far as 409/422.
    ("POST", "/v1/hooks/generic"): Row(
        Scope.WRITE,
        frozenset({409, 422}),
        lambda w: (
            "/v1/hooks/generic",
            {"json": {"model_url": "http://127.0.0.1:9/m.pt2", "name": "m", "version": "2"}},
        ),
        False,
    ),
    ("PUT", "/v1/hooks/mlflow/connection"): Row(
        Scope.ADMIN,
        frozenset({200, 201}),
        lambda w: ("/v1/hooks/mlflow/connection", {"json": {"tracking_uri": MLFLOW}}),
        False,
    ),
    # Until a connection is made, a caller who may read or delete it gets 404 (none yet).
    ("GET", "/v1/hooks/mlflow/connection"): Row(
        Scope.READ, frozenset({200, 404}), lambda w: ("/v1/hooks/mlflow/connection", {}), False
    ),
    ("DELETE", "/v1/hooks/mlflow/connection"): Row(
        Scope.ADMIN, frozenset({204, 404}), lambda w: ("/v1/hooks/mlflow/connection", {}), False
    ),
    # MLflow's webhook: no API key lets a delivery in, only its signature (none here): 401 for
    # every caller, whatever key it sends.
    ("POST", "/v1/hooks/mlflow"): Row(
        Scope.READ, frozenset({401}), lambda w: (f"/v1/hooks/mlflow?team={w.team_id}", {}), False
    ),
    # The world's audits never ran: a caller who may read them gets 409 (not succeeded).
    ("GET", "/v1/compare"): Row(
        Scope.READ,
        frozenset({409}),
        lambda w: (f"/v1/compare?audits={w.audit_id},{w.create_audit()}", {}),
        True,
    ),
    ("GET", "/v1/audits/{audit_id}/report"): Row(
        Scope.READ, frozenset({200}), lambda w: (f"/v1/audits/{w.audit_id}/report", {}), True
    ),
    # The dashboard's: a shift of the audit's sweep of a probe in its set, and the export.
    ("GET", "/v1/audits/{audit_id}/thumbnail"): Row(
        Scope.READ,
        frozenset({200}),
        lambda w: (f"/v1/audits/{w.audit_id}/thumbnail?probe=probe0000.png&dy=1&dx=0", {}),
        True,
    ),
    ("GET", "/v1/audits/{audit_id}/report.html"): Row(
        Scope.READ, frozenset({200}), lambda w: (f"/v1/audits/{w.audit_id}/report.html", {}), True
    ),
}


def _v1_routes(app: Any) -> set[tuple[str, str]]:
    """(method, path template) of every /v1 endpoint, including those of included routers
    (which this FastAPI keeps as nested routers, not flattened into `app.routes`)."""
    found = {
        (method, context.path)
        for context in iter_route_contexts(app.routes)
        if isinstance(context.original_route, APIRoute) and context.path.startswith("/v1")
        for method in context.methods or ()
    }
    assert ("GET", "/v1/models/{model_id}") in found  # the enumeration sees included routers
    return found


def _expected(row: Row, caller: str) -> frozenset[int]:
    if caller in ("no key", "unknown key"):
        return frozenset({401})
    if caller == "other team's admin":
        return frozenset({404}) if row.tenant_scoped else row.ok
    if not Scope(caller).allows(row.scope):
        return frozenset({403})
    return row.ok


def test_every_v1_route_and_method_has_a_row_and_every_row_a_route(tmp_path):
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'unused.db'}",
        secret_key=PEPPER,
        data_dir=tmp_path / "data",
    )
    app = create_app(settings, queue=RecordingQueue())
    try:
        routes = _v1_routes(app)
    finally:
        app.state.engine.dispose()
    assert sorted(routes - MATRIX.keys()) == [], "endpoints without a row in MATRIX"
    assert sorted(MATRIX.keys() - routes) == [], "rows in MATRIX for endpoints that are gone"


@pytest.fixture
def world(app_and_keys, inputs, report):
    app, keys = app_and_keys
    record_audits(app)
    app.state.settings.webhook_allow_private = True
    app.state.settings.hook_artifact_prefixes = [f"{MLFLOW}/"]
    with app.state.sessions.begin() as session:
        alpha = session.scalars(select(Team).where(Team.name == "alpha")).one()
        _, admin = create_key(session, team=alpha, scope=Scope.ADMIN, pepper=PEPPER)
    bearer = {
        "read": keys["alpha-read"],
        "write": keys["alpha-write"],
        "admin": admin,
        "other team's admin": keys["beta-admin"],
        "unknown key": "sa_unknown_0000000000000000",
    }
    world = World(
        client=TestClient(app),
        app=app,
        inputs=inputs,
        headers={"no key": {}} | {k: {"Authorization": f"Bearer {v}"} for k, v in bearer.items()},
    )
    world.team_id = str(alpha.id)
    world.model_id = world.upload_model(1)
    world.probe_set_id = world.upload_probe_set(1)
    world.audit_id = world.create_audit()
    with app.state.sessions.begin() as session:  # a report, as if the audit had run
        session.add(AuditReport(audit_id=uuid.UUID(world.audit_id), report=report))
    return world


def test_each_caller_gets_the_expected_status_from_each_endpoint(world):
    failures = []
    accepted = 0
    for method, path in sorted(_v1_routes(world.app)):
        row = MATRIX[(method, path)]
        for caller in CALLERS:
            url, kwargs = row.request(world)
            response = world.client.request(method, url, headers=world.headers[caller], **kwargs)
            expected = _expected(row, caller)
            if response.status_code not in expected:
                failures.append(
                    f"{method} {path} as {caller}: {response.status_code} not in "
                    f"{sorted(expected)}: {response.text[:200]}"
                )
            elif caller == "other team's admin":
                sent = url + str(kwargs.get("json", ""))  # echoing the caller's ids is fine
                leaked = [i for i in world.alpha_ids if i in response.text and i not in sent]
                if leaked:
                    failures.append(f"{method} {path} as {caller}: shows alpha's {leaked}")
            if response.status_code == 202:
                accepted += 1
    assert failures == []
    # Refused calls queue nothing: one job per accepted audit (the matrix's and the set-up's).
    assert len(world.app.state.queue.enqueued) == accepted + world.audits_created
