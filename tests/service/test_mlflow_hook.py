"""POST /v1/hooks/mlflow against a real MLflow tracking server on loopback.

One MLflow server (SQL backend in a temporary SQLite file, artifacts served through its
proxy) runs for the module. The round trip has it deliver real webhooks to a real uvicorn
server of ours; the other tests sign deliveries with their own implementation of MLflow's
signature scheme and send them with httpx.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from mlflow import MlflowClient
from sqlalchemy import select

from service.db import make_engine, session_factory
from service.demo import wait_ready
from service.migrate import upgrade
from service.registry_hooks.tables import MlflowConnection
from service.teams.repository import create_key, get_or_create_team
from service.teams.tables import Scope, Team

from .conftest import PEPPER, record_audits
from .loopback import free_port
from .test_audits_api import _auth
from .test_compare_api import CONFIG, files  # noqa: F401 (fixture)
from .test_serve import _env

MLFLOW_ENV = {
    # MLflow delivers only to https:// URLs on public addresses unless its operator allows more.
    "MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http",
    "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true",
    # Its cache of webhooks per event would hide a webhook created after that event's last use.
    "MLFLOW_WEBHOOK_CACHE_TTL": "0",
    # No job-runner processes (not used here): the server starts in seconds, not half a minute.
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
}
MLFLOW_START_S = 120
CREATED, ALIAS, TAG = (
    "model_version.created",
    "model_version_alias.created",
    "model_version_tag.set",
)


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory) -> Iterator[str]:
    """The base URL of a fresh MLflow tracking server (stopped with its workers at the end)."""
    root = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    log_path = root / "server.log"
    with pytest.MonkeyPatch.context() as env, log_path.open("wb") as log:
        for name, value in MLFLOW_ENV.items():
            env.setenv(name, value)  # the client in this process validates webhook URLs too
        server = subprocess.Popen(
            [
                *(sys.executable, "-m", "mlflow", "server"),
                *("--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}"),
                *("--artifacts-destination", str(root / "artifacts")),
                *("--host", "127.0.0.1", "--port", str(port), "--workers", "1"),
            ],
            env=os.environ | MLFLOW_ENV,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: uvicorn runs as its child
        )
        try:
            url = f"http://127.0.0.1:{port}"
            _wait_for_mlflow(url, server, log_path)
            yield url
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)


def _wait_for_mlflow(url: str, server: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + MLFLOW_START_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            break
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    tail = log_path.read_text(errors="replace")[-3000:]
    pytest.fail(
        f"the MLflow server at {url} did not answer /health within {MLFLOW_START_S} s "
        f"(exit code {server.poll()}); its log ends:\n{tail}"
    )


def _log_version(client: MlflowClient, root: Path, name: str, contents: dict[str, bytes]) -> str:
    """A registered model `name` whose version 1 holds `contents` (run artifacts under
    model/, registered with a runs:/ source); returns the version."""
    client.create_registered_model(name)
    experiment = client.create_experiment(name)
    run = client.create_run(experiment).info.run_id
    folder = root / name
    folder.mkdir()
    for filename, content in contents.items():
        (folder / filename).write_bytes(content)
    client.log_artifacts(run, str(folder), artifact_path="model")
    return client.create_model_version(name, f"runs:/{run}/model", run_id=run).version


def _sign(secret: str, delivery_id: str, timestamp: str, body: bytes) -> str:
    """MLflow's scheme, written here from its documentation: `v1,` + base64 of
    HMAC-SHA256(secret, "<delivery id>.<timestamp>.<body>")."""
    digest = hmac.new(
        secret.encode(), f"{delivery_id}.{timestamp}.{body.decode()}".encode(), hashlib.sha256
    ).digest()
    return "v1," + base64.b64encode(digest).decode()


def _delivery(event: str, secret: str, *, delivery_id: str | None = None, age: int = 0, **data):
    """(body, headers) of a delivery as MLflow sends it, signed with `secret`."""
    entity, action = event.split(".")
    body = json.dumps(
        {"entity": entity, "action": action, "timestamp": "2026-01-01T00:00:00+00:00", "data": data}
    ).encode()
    delivery_id = delivery_id or str(uuid.uuid4())
    timestamp = str(int(time.time()) - age)
    headers = {
        "Content-Type": "application/json",
        "X-MLflow-Delivery-Id": delivery_id,
        "X-MLflow-Timestamp": timestamp,
        "X-MLflow-Signature": _sign(secret, delivery_id, timestamp, body),
    }
    return body, headers


def _defaults(client, headers, files) -> str:  # noqa: F811
    """Probe set, a policy and the hook defaults; returns the probe set's id."""
    probe_set_id = client.post(
        "/v1/probe-sets",
        headers=headers,
        data={"name": "phase"},
        files={"file": ("p.zip", files["phase"])},
    ).json()["id"]
    gate = {"name": "gate", "thresholds": [{"metric": "consistency", "op": ">=", "value": 0.99}]}
    assert client.post("/v1/policies", headers=headers, json=gate).status_code == 201
    defaults = {"probe_set_id": probe_set_id, "config": CONFIG, "policies": ["gate"]}
    assert client.put("/v1/hooks/defaults", headers=headers, json=defaults).status_code == 200
    return probe_set_id


@pytest.fixture(scope="module")
def versions(mlflow_server, files, tmp_path_factory) -> dict[str, str]:  # noqa: F811
    """Registered models on the MLflow server: one good version, one with two model files."""
    client = MlflowClient(tracking_uri=mlflow_server)
    root = tmp_path_factory.mktemp("versions")
    good = f"net-{uuid.uuid4().hex[:8]}"
    two = f"two-{uuid.uuid4().hex[:8]}"
    assert _log_version(client, root, good, {"net.pt2": files["aliasing"], "MLmodel": b"x"}) == "1"
    _log_version(client, root, two, {"model.onnx": b"onnx", "model.pt2": files["aliasing"]})
    return {"good": good, "two": two}


def test_deliveries_are_verified_deduplicated_and_audited(
    app_and_keys,
    mlflow_server,
    versions,
    files,  # noqa: F811
):
    app, keys = app_and_keys
    queue = record_audits(app)
    app.state.settings.hook_artifact_prefixes = [f"{mlflow_server}/"]
    client = TestClient(app)
    # Connecting MLflow and setting hook defaults take an admin key.
    write, beta = _auth(keys, "alpha-admin"), _auth(keys, "beta-admin")
    connection_url = "/v1/hooks/mlflow/connection"

    # Connecting: only allow-listed tracking servers, the secret shown once.
    for uri, problem in [
        ("http://169.254.169.254/latest", "not under an allowed prefix"),
        (mlflow_server.replace("127.0.0.1", "user:pw@127.0.0.1"), "credentials"),
        ("file:///etc", "http:// or https://"),
    ]:
        refused = client.put(connection_url, headers=write, json={"tracking_uri": uri})
        assert refused.status_code == 422, refused.text
        assert problem in refused.json()["detail"]
    assert client.get(connection_url, headers=write).status_code == 404
    put = client.put(
        connection_url,
        headers=write,
        json={"tracking_uri": mlflow_server + "/", "events": [CREATED]},
    )
    assert put.status_code == 201, put.text
    connected = put.json()
    secret, hook_url = connected["secret"], connected["webhook_url"]
    with app.state.sessions() as session:
        alpha = session.scalars(select(Team).where(Team.name == "alpha")).one()
        row = session.scalars(select(MlflowConnection)).one()
        # Derived from the server's secret when needed: not stored anywhere in the row.
        assert secret not in repr([getattr(row, c.key) for c in MlflowConnection.__table__.c])
    assert hook_url == f"http://testserver/v1/hooks/mlflow?team={alpha.id}"
    assert connected["tracking_uri"] == mlflow_server
    shown = client.get(connection_url, headers=_auth(keys, "alpha-read"))
    assert shown.status_code == 200
    assert "secret" not in shown.json()
    assert secret not in shown.text
    assert shown.json()["webhook_url"] == hook_url
    # Another team sees and changes only its own connection.
    assert client.get(connection_url, headers=beta).status_code == 404
    assert client.delete(connection_url, headers=beta).status_code == 404
    beta_put = client.put(connection_url, headers=beta, json={"tracking_uri": mlflow_server})
    assert beta_put.status_code == 201
    assert beta_put.json()["secret"] != secret
    assert beta_put.json()["webhook_url"] != hook_url
    assert client.get(connection_url, headers=write).json() == shown.json()

    good = versions["good"]
    body, headers = _delivery(CREATED, secret, name=good, version="1")
    no_defaults = client.post(hook_url, content=body, headers=headers)
    assert no_defaults.status_code == 409, no_defaults.text
    probe_set_id = _defaults(client, write, files)

    # The delivery that failed (409) is processed when MLflow sends it again.
    accepted = client.post(hook_url, content=body, headers=headers)
    assert accepted.status_code == 202, accepted.text
    model, audit = accepted.json()["model"], accepted.json()["audit"]
    assert (model["name"], model["version"]) == (good, "1")
    assert model["registry_ref"] == f"models:/{good}/1"
    assert model["format"] == "torch_export"
    assert audit["probe_set_id"] == probe_set_id
    assert audit["status"] == "queued"
    assert accepted.headers["Location"] == f"/v1/audits/{audit['id']}"
    assert queue.enqueued == [uuid.UUID(audit["id"])]

    replayed = client.post(hook_url, content=body, headers=headers)
    assert replayed.status_code == 200, replayed.text
    assert replayed.json()["audit"]["id"] == audit["id"]
    assert replayed.headers["Idempotency-Replayed"] == "true"
    assert len(queue.enqueued) == 1

    # Refused alike: tampered body, wrong secret, no signature, unknown or malformed team.
    unsigned = "an X-MLflow-Signature made with this team's MLflow webhook secret"
    tampered = body.replace(b'"version": "1"', b'"version": "2"')
    delivery_id, timestamp = headers["X-MLflow-Delivery-Id"], headers["X-MLflow-Timestamp"]
    wrong = headers | {"X-MLflow-Signature": _sign("not-the-secret", delivery_id, timestamp, body)}
    missing = {k: v for k, v in headers.items() if k != "X-MLflow-Signature"}
    other_team = re.sub(r"team=[^&]+", f"team={uuid.uuid4()}", hook_url)
    for url, content, sent in [
        (hook_url, tampered, headers),
        (hook_url, body, wrong),
        (hook_url, body, missing),
        (other_team, body, headers),
        (re.sub(r"team=[^&]+", "team=x", hook_url), body, headers),
    ]:
        refused = client.post(url, content=content, headers=sent)
        assert refused.status_code == 401, refused.text
        assert unsigned in refused.json()["detail"]
    for age in (600, -600):  # signed, but replayed later or from a clock far ahead
        stale_body, stale = _delivery(CREATED, secret, age=age, name=good, version="1")
        refused = client.post(hook_url, content=stale_body, headers=stale)
        assert refused.status_code == 401
        assert "stale delivery" in refused.json()["detail"]
    huge = client.post(hook_url, content=b"x" * (1 << 21), headers=headers)
    assert huge.status_code == 413

    # Events the team did not select, and events it could not select, are acknowledged only.
    for event in (TAG, "registered_model.created"):
        ignored_body, ignored = _delivery(event, secret, name=good, version="1", key="k")
        answer = client.post(hook_url, content=ignored_body, headers=ignored)
        assert answer.status_code == 200, answer.text
        assert answer.json()["ignored"].startswith(f"{event} is not one of this team's events")

    # MLflow's errors name what failed; a version must hold exactly one model file.
    missing_body, missing_headers = _delivery(CREATED, secret, name=good, version="99")
    failed = client.post(hook_url, content=missing_body, headers=missing_headers)
    assert failed.status_code == 502, failed.text
    assert "model-versions/get" in failed.json()["detail"]
    assert "RESOURCE_DOES_NOT_EXIST" in failed.json()["detail"]
    two_body, two_headers = _delivery(CREATED, secret, name=versions["two"], version="1")
    ambiguous = client.post(hook_url, content=two_body, headers=two_headers)
    assert ambiguous.status_code == 422, ambiguous.text
    assert "found: model.onnx, model.pt2" in ambiguous.json()["detail"]

    # The same new delivery four times at once: one audit, every answer names it.
    same_body, same = _delivery(CREATED, secret, name=good, version="1")
    with ThreadPoolExecutor(4) as pool:
        answers = list(
            pool.map(lambda _: client.post(hook_url, content=same_body, headers=same), range(4))
        )
    assert sorted(a.status_code for a in answers) == [200, 200, 200, 202], [a.text for a in answers]
    assert len({a.json()["audit"]["id"] for a in answers}) == 1
    assert len(queue.enqueued) == 2
    listed = client.get("/v1/audits", headers=write, params={"model_name": good}).json()
    assert len(listed["items"]) == 2

    # A rotated secret replaces the old one at once; a deleted connection takes nothing.
    rotated = client.put(
        connection_url, headers=write, json={"tracking_uri": mlflow_server, "rotate_secret": True}
    ).json()
    assert rotated["secret"] not in (None, secret)
    again = client.put(connection_url, headers=write, json={"tracking_uri": mlflow_server})
    assert again.status_code == 200
    assert again.json()["secret"] is None
    old_body, old = _delivery(TAG, secret, name=good, version="1")
    assert client.post(hook_url, content=old_body, headers=old).status_code == 401
    new_body, new = _delivery(TAG, rotated["secret"], name=good, version="1")
    assert client.post(hook_url, content=new_body, headers=new).status_code == 200
    assert client.delete(connection_url, headers=write).status_code == 204
    assert client.post(hook_url, content=new_body, headers=new).status_code == 401
    assert client.get(connection_url, headers=write).status_code == 404


@contextmanager
def _service(tmp_path: Path, prefixes: list[str]) -> Iterator[httpx.Client]:
    """Our service as a real uvicorn server (embedded runner), with an admin key (it sets the
    hook defaults and connects MLflow)."""
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    upgrade(url)
    engine = make_engine(url)
    with session_factory(engine).begin() as session:
        team = get_or_create_team(session, name="vision")
        _, key = create_key(session, team=team, scope=Scope.ADMIN, pepper=PEPPER)
    engine.dispose()
    port = free_port()
    env = _env(
        DATABASE_URL=url,
        SHIFTAUDIT_SECRET_KEY=PEPPER,
        SHIFTAUDIT_DATA_DIR=str(tmp_path / "data"),
        SHIFTAUDIT_HOOK_ARTIFACT_PREFIXES=json.dumps(prefixes),
    )
    command = [sys.executable, "-m", "uvicorn", "--factory", "service.app:create_app"]
    server = subprocess.Popen([*command, "--port", str(port), "--log-level", "warning"], env=env)
    try:
        with httpx.Client(
            base_url=f"http://127.0.0.1:{port}",
            headers={"Authorization": f"Bearer {key}"},
            timeout=30,
        ) as http:
            wait_ready(http, server)
            yield http
    finally:
        server.terminate()
        server.wait(timeout=30)


def _until(what: str, check, timeout: float = 120.0):
    """Poll `check()` until it returns something truthy; fail naming `what`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.2)
    pytest.fail(f"{what}: not within {timeout} s")


def _finished(http: httpx.Client, audit_id: str) -> dict | None:
    audit = http.get(f"/v1/audits/{audit_id}").json()
    return audit if audit["status"] in ("succeeded", "failed", "cancelled") else None


def _hook_answers(http: httpx.Client, status: int) -> int:
    """How many MLflow deliveries our service answered with `status` (from /metrics)."""
    pattern = (
        r'shiftaudit_http_requests_total\{method="POST",route="/v1/hooks/mlflow",'
        rf'status="{status}"\}} (\S+)'
    )
    found = re.search(pattern, http.get("/metrics").text)
    return int(float(found.group(1))) if found else 0


@pytest.mark.slow
def test_mlflow_delivers_new_versions_and_aliases_which_are_audited(
    mlflow_server,
    tmp_path,
    files,  # noqa: F811
):
    with _service(tmp_path, prefixes=[f"{mlflow_server}/"]) as http:
        probe_set_id = _defaults(http, {}, files)
        connection = http.put(
            "/v1/hooks/mlflow/connection",
            json={"tracking_uri": mlflow_server, "events": [CREATED, ALIAS]},
        )
        assert connection.status_code == 201, connection.text
        mlflow = MlflowClient(tracking_uri=mlflow_server)
        webhook = mlflow.create_webhook(
            name=f"shiftaudit-{uuid.uuid4().hex[:8]}",
            url=connection.json()["webhook_url"],
            events=[CREATED, ALIAS, TAG],  # MLflow sends all three; the team selected two
            secret=connection.json()["secret"],
        )
        name = f"round-{uuid.uuid4().hex[:8]}"

        def audits() -> list[dict]:
            return http.get("/v1/audits", params={"model_name": name}).json()["items"]

        try:
            version = _log_version(mlflow, tmp_path, name, {"model.pt2": files["aliasing"]})
            _until("an audit of the new model version", lambda: len(audits()) == 1)
            mlflow.set_model_version_tag(name, version, "stage", "qa")
            _until("the tag event's answer", lambda: _hook_answers(http, 200) == 1)
            assert len(audits()) == 1  # delivered, acknowledged, not audited
            mlflow.set_registered_model_alias(name, "champion", version)
            _until("an audit for the alias", lambda: len(audits()) == 2)
        finally:
            mlflow.delete_webhook(webhook.webhook_id)

        assert _hook_answers(http, 202) == 2
        for queued in audits():
            audit = _until(
                f"audit {queued['id']} finishing", lambda q=queued: _finished(http, q["id"])
            )
            assert audit["status"] == "succeeded", audit["error"]
            assert audit["probe_set_id"] == probe_set_id
            assert audit["policy"]["status"] == "failed"  # the stride-2 net aliases
            model = http.get(f"/v1/models/{audit['model_id']}").json()
            assert (model["name"], model["version"]) == (name, version)
            assert model["registry_ref"] == f"models:/{name}/{version}"
