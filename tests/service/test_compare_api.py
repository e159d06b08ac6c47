"""GET /v1/compare on audits run for real (embedded runner), on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tests.nets import GlobalPoolNet, export_program, noise_probes, phase_probes, zip_directory

from .conftest import record_audits
from .test_audits_api import _auth, _wait

CONFIG = {
    "preprocess": {"input_size": [16, 16], "resize": 16},
    "sweep": {"mode": "circular", "max_shift": 2},
    "runtime": {"batch_size": 25, "device": "cpu"},
    "bootstrap": 100,
}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    return {
        "invariant": export_program(GlobalPoolNet(stride=1), root / "s1.pt2").read_bytes(),
        "aliasing": export_program(GlobalPoolNet(stride=2), root / "s2.pt2").read_bytes(),
        "phase": zip_directory(phase_probes(root / "phase", 24)),
        "noise": zip_directory(noise_probes(root / "noise", 12)),
    }


def _audit(client, keys, files, model, probes):
    headers = _auth(keys, "alpha-write")
    model_id = client.post(
        "/v1/models", headers=headers, data={"name": model}, files={"file": ("m.pt2", files[model])}
    ).json()["id"]
    probe_set_id = client.post(
        "/v1/probe-sets",
        headers=headers,
        data={"name": probes},
        files={"file": ("p.zip", files[probes])},
    ).json()["id"]
    created = client.post(
        "/v1/audits",
        headers=headers,
        params={"reuse": "false"},
        json={"model_id": model_id, "probe_set_id": probe_set_id, "config": CONFIG},
    )
    assert created.status_code == 202, created.text
    assert _wait(client, keys, created.json()["id"])["status"] == "succeeded"
    return created.json()["id"]


def _compare(client, keys, *ids, key="alpha-read"):
    return client.get("/v1/compare", params={"audits": ",".join(ids)}, headers=_auth(keys, key))


def test_paired_comparison_finds_the_aliasing_model_significantly_worse(app_and_keys, files):
    app, keys = app_and_keys
    client = TestClient(app)
    invariant = _audit(client, keys, files, "invariant", "phase")
    again = _audit(client, keys, files, "invariant", "phase")
    aliasing = _audit(client, keys, files, "aliasing", "phase")
    other_probes = _audit(client, keys, files, "invariant", "noise")

    response = _compare(client, keys, invariant, again, aliasing, other_probes)
    assert response.status_code == 200, response.text
    body = response.json()
    same, worse, unpaired = body["comparisons"]
    assert [a["id"] for a in body["audits"]] == [invariant, again, aliasing, other_probes]

    assert same["pairing"] == "paired"
    assert not any(d["significant"] for d in same["deltas"])
    assert same["mcnemar"]["p_value"] == 1.0
    assert set(same["shift_map"]["difference"]) == {0.0}

    assert worse["pairing"] == "paired"
    consistency = next(d for d in worse["deltas"] if d["metric"] == "consistency")
    assert consistency["delta"] < 0
    assert consistency["significant"]
    assert worse["mcnemar"]["significant"]
    assert worse["mcnemar"]["candidate_only"] == 0
    assert min(worse["shift_map"]["difference"]) < 0
    assert worse["layers"], "both nets have the same layer names"

    assert unpaired["pairing"] == "unpaired"
    assert unpaired["reason"] == "the audits used different probe sets"
    assert unpaired["mcnemar"] is None

    # Another team sees none of it; bad lists are refused with the reason.
    assert _compare(client, keys, invariant, aliasing, key="beta-admin").status_code == 404
    assert _compare(client, keys, invariant).status_code == 422
    assert _compare(client, keys, invariant, invariant).status_code == 422
    bad = _compare(client, keys, invariant, "not-an-id")
    assert bad.status_code == 422
    assert "not-an-id" in bad.text


def test_only_succeeded_audits_compare(app_and_keys, files):
    app, keys = app_and_keys
    client = TestClient(app)
    done = _audit(client, keys, files, "invariant", "phase")
    record_audits(app)  # from here on, audits stay queued
    headers = _auth(keys, "alpha-write")
    audit = client.get(f"/v1/audits/{done}", headers=headers).json()
    queued = client.post(
        "/v1/audits",
        headers=headers,
        params={"reuse": "false"},
        json={"model_id": audit["model_id"], "probe_set_id": audit["probe_set_id"]},
    ).json()["id"]
    response = _compare(client, keys, done, queued)
    assert response.status_code == 409
    assert f"audit {queued} is queued" in response.text
