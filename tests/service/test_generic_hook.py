"""POST /v1/hooks/generic against a real artifact store on loopback."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from .conftest import record_audits
from .loopback import LoopbackServer, QuietHandler
from .test_audits_api import _auth, _wait
from .test_compare_api import CONFIG, files  # noqa: F401 (fixture)


class ArtifactStore(LoopbackServer):
    """Serves files under /models/ to requests with the right bearer token."""

    def __init__(self, objects: dict[str, bytes], token: str) -> None:
        store = self

        class Handler(QuietHandler):
            def do_GET(self) -> None:
                name = self.path.removeprefix("/models/")
                if self.headers.get("Authorization") != f"Bearer {token}":
                    self.send_response(401)
                    self.end_headers()
                    return
                if name not in objects:
                    self.send_response(404)
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(objects[name])))
                self.end_headers()
                self.wfile.write(objects[name])
                store.served.append(name)

        self.served: list[str] = []
        super().__init__(Handler)
        self.prefix = f"{self.base_url}/models/"


@pytest.fixture
def store(files):  # noqa: F811
    server = ArtifactStore({"net-2.pt2": files["aliasing"]}, token="registry-token")
    yield server
    server.close()


def _prepared(app, keys, probes: bytes, store) -> tuple[TestClient, dict[str, str], str]:
    """A client allowed to fetch from `store`, alpha's admin headers (hook defaults and
    policies take an admin key), and its probe set."""
    app.state.settings.hook_artifact_prefixes = [store.prefix]
    client = TestClient(app)
    write = _auth(keys, "alpha-admin")
    probe_set_id = client.post(
        "/v1/probe-sets",
        headers=write,
        data={"name": "phase"},
        files={"file": ("p.zip", probes)},
    ).json()["id"]
    return client, write, probe_set_id


def test_a_model_version_announced_by_a_registry_is_fetched_and_audited(
    app_and_keys,
    files,  # noqa: F811
    store,
):
    app, keys = app_and_keys
    client, write, probe_set_id = _prepared(app, keys, files["phase"], store)
    hook = {
        "model_url": store.prefix + "net-2.pt2",
        "name": "net",
        "version": "2",
        "token": "registry-token",
    }
    assert client.post("/v1/hooks/generic", headers=write, json=hook).status_code == 409
    client.post(
        "/v1/policies",
        headers=write,
        json={"name": "gate", "thresholds": [{"metric": "consistency", "op": ">=", "value": 0.99}]},
    )
    defaults = {"probe_set_id": probe_set_id, "config": CONFIG, "policies": ["gate"]}
    assert client.put("/v1/hooks/defaults", headers=write, json=defaults).status_code == 200

    accepted = client.post("/v1/hooks/generic", headers=write, json=hook)
    assert accepted.status_code == 202, accepted.text
    body = accepted.json()
    assert (body["model"]["name"], body["model"]["version"]) == ("net", "2")
    assert body["model"]["registry_ref"] == hook["model_url"]
    audit = _wait(client, keys, body["audit"]["id"])
    assert audit["status"] == "succeeded"
    assert audit["probe_set_id"] == probe_set_id
    assert audit["policy"]["status"] == "failed"  # the stride-2 net aliases
    assert store.served == ["net-2.pt2"]

    wrong_token = client.post("/v1/hooks/generic", headers=write, json=hook | {"token": "x"})
    assert wrong_token.status_code == 502
    assert "answered 401" in wrong_token.text
    elsewhere = client.post(
        "/v1/hooks/generic",
        headers=write,
        json=hook | {"model_url": "http://169.254.169.254/latest/meta-data"},
    )
    assert elsewhere.status_code == 422
    assert "not on an allowed artifact store" in elsewhere.text
    app.state.settings.max_model_bytes = 100
    too_large = client.post("/v1/hooks/generic", headers=write, json=hook)
    assert too_large.status_code == 413


def test_hook_audits_run_on_the_gpu_type_of_the_defaults(
    app_and_keys,
    files,  # noqa: F811
    store,
):
    app, keys = app_and_keys
    app.state.settings.gpu_types = ["a100"]
    queue = record_audits(app)
    client, write, probe_set_id = _prepared(app, keys, files["phase"], store)
    gpu_config = {**CONFIG, "runtime": {**CONFIG["runtime"], "device": "auto"}}
    defaults = {"probe_set_id": probe_set_id, "config": gpu_config, "gpu_type": "h100"}
    unknown = client.put("/v1/hooks/defaults", headers=write, json=defaults)
    assert unknown.status_code == 422
    assert "'h100' is not a GPU type of this deployment (a100)" in unknown.text
    on_cpu = defaults | {"config": CONFIG, "gpu_type": "a100"}
    assert CONFIG["runtime"]["device"] == "cpu"
    refused = client.put("/v1/hooks/defaults", headers=write, json=on_cpu)
    assert refused.status_code == 422
    assert "runs on no GPU" in refused.text

    defaults["gpu_type"] = "a100"
    assert client.put("/v1/hooks/defaults", headers=write, json=defaults).status_code == 200
    got = client.get("/v1/hooks/defaults", headers=_auth(keys, "alpha-read")).json()
    assert got["gpu_type"] == "a100"
    hook = {"model_url": store.prefix + "net-2.pt2", "name": "net", "version": "2"}
    accepted = client.post(
        "/v1/hooks/generic", headers=write, json=hook | {"token": "registry-token"}
    )
    assert accepted.status_code == 202, accepted.text
    assert accepted.json()["audit"]["gpu_type"] == "a100"
    assert queue.routes == ["audits.gpu.a100"]

    app.state.settings.gpu_types = ["h100"]  # the operator retired the a100 workers
    # Refused before the fetch: a wrong token would otherwise make it a 502.
    stale = client.post("/v1/hooks/generic", headers=write, json=hook | {"token": "x"})
    assert stale.status_code == 409
    detail = stale.json()["detail"]
    assert "GPU type 'a100', which this deployment no longer runs" in detail
    assert "(SHIFTAUDIT_GPU_TYPES: h100)" in detail
    assert queue.routes == ["audits.gpu.a100"]
