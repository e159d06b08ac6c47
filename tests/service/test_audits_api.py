"""Audits end to end: API -> embedded runner (a real spawned process) -> database -> API."""

from __future__ import annotations

import io
import time
import zipfile

import jsonschema
import pytest
from fastapi.testclient import TestClient

from shiftaudit.config import AuditConfig
from shiftaudit.engine import run_audit

from ..nets import AliasingNet, export_program, noise_probes

CONFIG = {
    "preprocess": {"input_size": [16, 16], "resize": 16},
    "sweep": {"mode": "zero", "max_shift": 2},
    "runtime": {"batch_size": 25, "device": "cpu"},
    "bootstrap": 100,
}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("audit-inputs")
    model = export_program(AliasingNet(seed=4), root / "model.pt2")
    probes = noise_probes(root / "probes", 8, labels=6)
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as bundle:
        for path in sorted(probes.iterdir()):
            bundle.write(path, path.name)
    (root / "probes.zip").write_bytes(archive.getvalue())
    return model, root / "probes.zip"


def _auth(keys, name):
    return {"Authorization": f"Bearer {keys[name]}"}


def _upload_inputs(client, keys, inputs, key="alpha-write"):
    model, probes = inputs
    model_id = client.post(
        "/v1/models",
        headers=_auth(keys, key),
        data={"name": "aliasing"},
        files={"file": ("model.pt2", model.read_bytes())},
    ).json()["id"]
    probe_set_id = client.post(
        "/v1/probe-sets",
        headers=_auth(keys, key),
        data={"name": "noise"},
        files={"file": ("probes.zip", probes.read_bytes())},
    ).json()["id"]
    return model_id, probe_set_id


def _wait(client, keys, audit_id, timeout=180.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        audit = client.get(f"/v1/audits/{audit_id}", headers=_auth(keys, "alpha-read")).json()
        if audit["status"] in ("succeeded", "failed", "cancelled"):
            return audit
        time.sleep(0.2)
    raise AssertionError(f"audit {audit_id} did not finish in {timeout} s")


def test_an_audit_runs_in_a_child_process_and_reports_what_the_engine_reports(app_and_keys, inputs):
    app, keys = app_and_keys
    client = TestClient(app)
    model_id, probe_set_id = _upload_inputs(client, keys, inputs)
    created = client.post(
        "/v1/audits",
        headers=_auth(keys, "alpha-write"),
        json={"model_id": model_id, "probe_set_id": probe_set_id, "config": CONFIG},
    )
    assert created.status_code == 202, created.text
    audit_id = created.json()["id"]
    assert created.headers["location"] == f"/v1/audits/{audit_id}"
    assert created.json()["status"] == "queued"
    audit = _wait(client, keys, audit_id)
    assert audit["status"] == "succeeded", audit["error"]
    assert audit["progress"] == 1.0
    report = client.get(f"/v1/audits/{audit_id}/report", headers=_auth(keys, "alpha-read")).json()
    local = run_audit(*inputs, AuditConfig.model_validate(CONFIG))
    assert report["summary"]["all"]["consistency"]["value"] == local.summary.all.consistency.value
    assert report["shift_map"]["agreement"] == local.shift_map.agreement
    assert report["provenance"]["model_sha256"] == local.provenance.model_sha256
    assert report["provenance"]["probe_set_sha256"] == local.provenance.probe_set_sha256
    # The OpenAPI document types the answer with the full report schema, and it holds.
    document = app.openapi()
    answer = document["paths"]["/v1/audits/{audit_id}/report"]["get"]["responses"]["200"]
    schema = answer["content"]["application/json"]["schema"]
    assert schema == {"$ref": "#/components/schemas/Report"}
    validator = jsonschema.Draft202012Validator(
        {"$ref": "#/components/schemas/Report", "components": document["components"]}
    )
    validator.validate(report)
    with pytest.raises(jsonschema.ValidationError, match="summary"):
        validator.validate({k: v for k, v in report.items() if k != "summary"})
    # Summary columns mirror the report, for lists that never parse it.
    assert audit["consistency"] == report["summary"]["all"]["consistency"]["value"]
    assert audit["accuracy"] == report["summary"]["all"]["accuracy"]["value"]
    listed = client.get("/v1/audits?status=succeeded", headers=_auth(keys, "alpha-read")).json()
    assert [a["id"] for a in listed["items"]] == [audit_id]
    assert (
        client.get("/v1/audits?status=failed", headers=_auth(keys, "alpha-read")).json()["items"]
        == []
    )
    # Finished: cannot be cancelled; its model cannot be deleted under it.
    cancel = client.post(f"/v1/audits/{audit_id}/cancel", headers=_auth(keys, "alpha-write"))
    assert cancel.status_code == 409
    delete = client.delete(f"/v1/models/{model_id}", headers=_auth(keys, "alpha-write"))
    assert delete.status_code == 409
    # Another team sees none of it.
    for path in (f"/v1/audits/{audit_id}", f"/v1/audits/{audit_id}/report"):
        assert client.get(path, headers=_auth(keys, "beta-admin")).status_code == 404
    assert client.get("/v1/audits", headers=_auth(keys, "beta-admin")).json()["items"] == []


def test_bad_audits_are_refused_or_fail_with_the_engines_message(app_and_keys, inputs):
    app, keys = app_and_keys
    client = TestClient(app)
    model_id, probe_set_id = _upload_inputs(client, keys, inputs)
    theirs_model, _ = _upload_inputs(client, keys, inputs, key="beta-admin")
    foreign = client.post(
        "/v1/audits",
        headers=_auth(keys, "alpha-write"),
        json={"model_id": theirs_model, "probe_set_id": probe_set_id},
    )
    assert foreign.status_code == 404
    invalid = client.post(
        "/v1/audits",
        headers=_auth(keys, "alpha-write"),
        json={
            "model_id": model_id,
            "probe_set_id": probe_set_id,
            "config": {"sweep": {"max_shift": -1}},
        },
    )
    assert invalid.status_code == 422
    assert invalid.headers["content-type"] == "application/problem+json"
    read_only = client.post(
        "/v1/audits",
        headers=_auth(keys, "alpha-read"),
        json={"model_id": model_id, "probe_set_id": probe_set_id},
    )
    assert read_only.status_code == 403
    wrong_size = {**CONFIG, "preprocess": {"input_size": [32, 32]}}
    created = client.post(
        "/v1/audits",
        headers=_auth(keys, "alpha-write"),
        json={"model_id": model_id, "probe_set_id": probe_set_id, "config": wrong_size},
    )
    audit = _wait(client, keys, created.json()["id"])
    assert audit["status"] == "failed"
    assert "(N, 3, 16, 16)" in audit["error"]
    report = client.get(f"/v1/audits/{audit['id']}/report", headers=_auth(keys, "alpha-read"))
    assert report.status_code == 409
