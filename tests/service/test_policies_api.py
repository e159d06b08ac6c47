"""Policies: CRUD, and verdicts on audits run for real (embedded runner)."""

from __future__ import annotations

import json
import uuid

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from service.audits.reconciler import policy_from, reconcile_once
from service.audits.tables import AuditShard
from service.db import utcnow
from tests.nets import GlobalPoolNet, export_program, phase_probes, zip_directory

from .test_audits_api import _auth, _wait
from .test_compare_api import CONFIG
from .test_webhooks import Receiver


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("policies")
    return {
        "v1": export_program(GlobalPoolNet(stride=1), root / "v1.pt2").read_bytes(),
        "v2": export_program(GlobalPoolNet(stride=2), root / "v2.pt2").read_bytes(),
        "v3": export_program(GlobalPoolNet(stride=1, seed=3), root / "v3.pt2").read_bytes(),
        "phase": zip_directory(phase_probes(root / "phase", 24)),
    }


def _post_policy(client, keys, body, key="alpha-admin"):
    return client.post("/v1/policies", headers=_auth(keys, key), json=body)


def test_policies_are_created_listed_and_deleted_per_team(app_and_keys):
    app, keys = app_and_keys
    client = TestClient(app)
    body = {"name": "gate", "thresholds": [{"metric": "consistency", "op": ">=", "value": 0.9}]}
    created = _post_policy(client, keys, body)
    assert created.status_code == 201, created.text
    assert created.json()["thresholds"] == body["thresholds"]
    assert created.json()["no_regression"] is None
    assert _post_policy(client, keys, body).status_code == 409
    bad = _post_policy(
        client, keys, {"name": "x", "thresholds": [{"metric": "speed", "op": ">=", "value": 1}]}
    )
    assert bad.status_code == 422
    assert "thresholds.0.metric" in bad.text
    listed = client.get("/v1/policies", headers=_auth(keys, "alpha-read")).json()
    assert [p["name"] for p in listed] == ["gate"]
    assert client.get("/v1/policies", headers=_auth(keys, "beta-admin")).json() == []
    assert client.get("/v1/policies/gate", headers=_auth(keys, "beta-admin")).status_code == 404
    assert client.delete("/v1/policies/gate", headers=_auth(keys, "alpha-admin")).status_code == 204
    assert client.get("/v1/policies/gate", headers=_auth(keys, "alpha-read")).status_code == 404


def _model(client, keys, files, version):
    return client.post(
        "/v1/models",
        headers=_auth(keys, "alpha-write"),
        data={"name": "net", "version": version},
        files={"file": ("m.pt2", files[version])},
    ).json()["id"]


def _audit(client, keys, model_id, probe_set_id, policies):
    created = client.post(
        "/v1/audits",
        headers=_auth(keys, "alpha-write"),
        params={"reuse": "false"},
        json={
            "model_id": model_id,
            "probe_set_id": probe_set_id,
            "config": CONFIG,
            "policies": policies,
        },
    )
    assert created.status_code == 202, created.text
    audit = _wait(client, keys, created.json()["id"])
    assert audit["status"] == "succeeded", audit
    return audit


def test_finished_audits_carry_the_verdict_of_their_policies(app_and_keys, files):
    app, keys = app_and_keys
    client = TestClient(app)
    for body in (
        {
            "name": "strict",
            "thresholds": [
                {"metric": "consistency", "op": ">=", "value": 0.99},
                {"metric": "flip_rate", "op": "<=", "value": 0.01},
            ],
        },
        {"name": "lenient", "thresholds": [{"metric": "consistency", "op": ">=", "value": 0.5}]},
        {"name": "labelled", "thresholds": [{"metric": "accuracy", "op": ">=", "value": 0.5}]},
        {"name": "no-regression", "no_regression": {"baseline": "previous_version"}},
    ):
        assert _post_policy(client, keys, body).status_code == 201
    probe_set_id = client.post(
        "/v1/probe-sets",
        headers=_auth(keys, "alpha-write"),
        data={"name": "phase"},
        files={"file": ("p.zip", files["phase"])},
    ).json()["id"]
    unknown = client.post(
        "/v1/audits",
        headers=_auth(keys, "alpha-write"),
        json={
            "model_id": _model(client, keys, files, "v1"),
            "probe_set_id": probe_set_id,
            "policies": ["strict", "nonexistent"],
        },
    )
    assert unknown.status_code == 422
    assert "nonexistent" in unknown.text

    ids = {v: _model(client, keys, files, v) for v in ("v1", "v2", "v3")}
    first = _audit(client, keys, ids["v1"], probe_set_id, ["strict", "no-regression"])
    assert first["policy"]["status"] == "passed"
    # No earlier version: the regression rule has nothing to fail on.
    assert [p["reasons"] for p in first["policy"]["policies"]] == [[], []]

    second = _audit(
        client, keys, ids["v2"], probe_set_id, ["strict", "lenient", "labelled", "no-regression"]
    )
    verdicts = {p["name"]: p for p in second["policy"]["policies"]}
    assert second["policy"]["status"] == "failed"
    assert verdicts["lenient"] == {"name": "lenient", "status": "passed", "reasons": []}
    strict = verdicts["strict"]["reasons"]
    assert len(strict) == 2
    assert strict[0].startswith("consistency is ")
    assert strict[1].startswith("flip_rate is ")
    assert verdicts["labelled"]["reasons"] == [
        "accuracy is not defined for this audit (it needs labels or an exhaustive sweep)"
    ]
    regressed = verdicts["no-regression"]["reasons"]
    assert any(
        r.startswith(f"consistency regressed significantly against audit {first['id']}")
        for r in regressed
    )
    assert any("per-probe invariance regressed" in r for r in regressed)

    third = _audit(client, keys, ids["v3"], probe_set_id, ["no-regression"])
    assert third["policy"] == {
        "status": "passed",
        "policies": [{"name": "no-regression", "status": "passed", "reasons": []}],
    }

    # The model's lineage: every version with its latest audit, oldest first.
    trend = client.get(
        "/v1/trend",
        params={"model_name": "net", "probe_set_id": probe_set_id},
        headers=_auth(keys, "alpha-read"),
    ).json()
    assert [(p["version"], p["audit"]["id"]) for p in trend] == [
        ("v1", first["id"]),
        ("v2", second["id"]),
        ("v3", third["id"]),
    ]
    assert trend[1]["audit"]["consistency"] < trend[0]["audit"]["consistency"]
    hidden = client.get(
        "/v1/trend", params={"model_name": "net"}, headers=_auth(keys, "beta-admin")
    )
    assert hidden.json() == []


def test_a_baseline_that_cannot_be_compared_fails_the_gate_and_stalls_nothing(app_and_keys, files):
    """Reproduces a stuck audit: a no-regression baseline from before per-probe statistics
    were stored raised an HTTP 409 inside the worker after its shard succeeded, leaving the
    audit running, and the reconciler's merge re-raised it on every pass before any webhook
    went out. Now the gate fails with the reason and the pass goes on to deliver."""
    app, keys = app_and_keys
    app.state.settings.webhook_allow_private = True  # the receiver is on loopback
    receiver = Receiver([])
    client = TestClient(app)
    try:
        write = _auth(keys, "alpha-write")
        probe_set_id = client.post(
            "/v1/probe-sets",
            headers=write,
            data={"name": "phase"},
            files={"file": ("p.zip", files["phase"])},
        ).json()["id"]
        baseline = _audit(client, keys, _model(client, keys, files, "v1"), probe_set_id, [])
        with app.state.sessions.begin() as session:  # as kept before per-probe statistics
            session.execute(
                update(AuditShard)
                .where(AuditShard.audit_id == uuid.UUID(baseline["id"]))
                .values(result=None)
            )
        hook = client.post(
            "/v1/webhooks",
            headers=_auth(keys, "alpha-admin"),
            json={"url": receiver.url, "events": ["audit.policy_failed"]},
        )
        assert hook.status_code == 201, hook.text
        gate = {"name": "no-worse", "no_regression": {"baseline": baseline["id"]}}
        assert _post_policy(client, keys, gate).status_code == 201
        candidate = _audit(
            client, keys, _model(client, keys, files, "v3"), probe_set_id, ["no-worse"]
        )
        assert candidate["policy"]["status"] == "failed"
        (reason,) = candidate["policy"]["policies"][0]["reasons"]
        assert reason == (
            f"cannot test for regression against audit {baseline['id']}: audit "
            f"{baseline['id']} predates stored per-probe statistics; run it again"
        )
        done = reconcile_once(
            app.state.sessions, app.state.queue, policy_from(app.state.settings), now=utcnow()
        )
        assert done["webhook_delivered"] == 1
        (_, body), *_ = receiver.received
        assert json.loads(body)["audit"]["id"] == candidate["id"]
    finally:
        receiver.close()
