"""Bounded cost and fair turns: an audit's cost is known and limited before it is queued,
and one team's hours of queued work cannot keep another team's small audit waiting for
more than the shard now running. Before, any size was accepted and shards ran in order."""

from __future__ import annotations

import time
import uuid

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from service.audits.tables import AuditShard
from service.settings import TeamLimits
from shiftaudit.config import AuditConfig
from shiftaudit.cost import layer_profile_forward_passes
from shiftaudit.shifts import plan_shifts
from tests.hostile.conftest import BOTH
from tests.hostile.inputs import uploaded_ids
from tests.service.conftest import record_audits
from tests.service.test_audits_api import _auth

CONFIG = {
    "preprocess": {"input_size": [16, 16], "resize": 16},
    "sweep": {"mode": "circular", "max_shift": 2},
    "runtime": {"batch_size": 25, "device": "cpu"},
    "bootstrap": 10,
}


@pytest.fixture
def ids_for(tmp_path):
    """Uploads a model and an 8-probe set for a team: their ids."""
    return lambda client, headers: uploaded_ids(client, headers, tmp_path / "f", probes=8)


def test_the_estimate_is_the_sweep_the_engine_would_run_and_its_layer_profile(
    app_and_keys, ids_for
):
    app, keys = app_and_keys
    record_audits(app)
    client = TestClient(app)
    write = _auth(keys, "alpha-write")
    body = ids_for(client, write) | {"config": CONFIG}
    estimate = client.post("/v1/audits/estimate", headers=write, json=body)
    assert estimate.status_code == 200, estimate.text
    found = estimate.json()
    config = AuditConfig.model_validate(CONFIG)
    shifts = plan_shifts(config.sweep, (16, 16)).count  # the engine's own sweep: 25 shifts
    layers = layer_profile_forward_passes(probes=4, strides=5)  # 4 probes profiled, strides 1..16
    assert found["sweep_forward_passes"] == 8 * shifts
    assert found["layer_forward_passes"] == layers
    assert found["forward_passes"] == 8 * shifts + layers
    assert (found["allowed"], found["reason"], found["open_audits"]) == (True, None, 0)
    assert app.state.queue.enqueued == []  # nothing queued by an estimate
    created = client.post("/v1/audits", headers=write, json=body)
    assert created.json()["forward_passes"] == found["forward_passes"]


@BOTH
def test_an_audit_over_the_limit_is_refused_with_the_estimate(app_and_keys, ids_for):
    app, keys = app_and_keys
    record_audits(app)
    app.state.settings.max_forward_passes_per_audit = 100
    client = TestClient(app)
    write = _auth(keys, "alpha-write")
    body = ids_for(client, write) | {"config": CONFIG}
    refused = client.post("/v1/audits", headers=write, json=body)
    assert refused.status_code == 422, refused.text
    problem = refused.json()
    assert problem["max_forward_passes_per_audit"] == 100
    assert problem["forward_passes"] > 100
    assert "forward passes, more than this team's limit of 100" in problem["detail"]
    assert app.state.queue.enqueued == []
    # A team with a larger limit of its own is not refused.
    app.state.settings.team_limits = {"beta": TeamLimits(max_forward_passes_per_audit=10**6)}
    beta = _auth(keys, "beta-admin")
    other = ids_for(client, beta) | {"config": CONFIG}
    assert client.post("/v1/audits", headers=beta, json=other).status_code == 202


def test_a_team_at_its_open_audit_limit_gets_429_and_others_do_not(app_and_keys, ids_for):
    app, keys = app_and_keys
    record_audits(app)  # audits stay queued
    app.state.settings.max_open_audits_per_team = 2
    client = TestClient(app)
    write = _auth(keys, "alpha-write")
    body = ids_for(client, write) | {"config": CONFIG}
    for seed in (1, 2):
        config = CONFIG | {"seed": seed}
        assert (
            client.post("/v1/audits", headers=write, json=body | {"config": config}).status_code
            == 202
        )
    third = client.post("/v1/audits", headers=write, json=body | {"config": CONFIG | {"seed": 3}})
    assert third.status_code == 429, third.text
    assert third.headers["retry-after"] == "60"
    assert (third.json()["open_audits"], third.json()["max_open_audits_per_team"]) == (2, 2)
    beta = _auth(keys, "beta-admin")
    other = ids_for(client, beta) | {"config": CONFIG}
    assert client.post("/v1/audits", headers=beta, json=other).status_code == 202


def test_large_audits_are_split_by_cost_so_no_shard_runs_too_long(app_and_keys, ids_for):
    app, keys = app_and_keys
    record_audits(app)
    app.state.settings.shard_forward_passes = 60  # 25 passes a probe: 2 probes a shard
    client = TestClient(app)
    write = _auth(keys, "alpha-write")
    body = ids_for(client, write) | {"config": CONFIG}
    created = client.post("/v1/audits", headers=write, json=body)
    assert created.status_code == 202, created.text
    with app.state.sessions() as session:
        shards = session.scalars(
            select(AuditShard).where(AuditShard.audit_id == uuid.UUID(created.json()["id"]))
        ).all()
    assert [(s.probe_start, s.probe_stop) for s in shards] == [(0, 2), (2, 4), (4, 6), (6, 8)]


@BOTH
def test_a_small_audit_of_another_team_runs_next_not_last(app_and_keys, ids_for):
    """One worker (the embedded runner), team alpha's audit in four shards queued first,
    then team beta's one-shard audit: beta's shard is the second to start."""
    app, keys = app_and_keys
    app.state.settings.shard_probes = 2
    client = TestClient(app)
    alpha, beta = _auth(keys, "alpha-write"), _auth(keys, "beta-admin")
    long = client.post(
        "/v1/audits", headers=alpha, json=ids_for(client, alpha) | {"config": CONFIG}
    )
    small_body = ids_for(client, beta) | {"config": CONFIG}
    app.state.settings.shard_probes = 8
    small = client.post("/v1/audits", headers=beta, json=small_body)
    assert (long.status_code, small.status_code) == (202, 202)
    deadline = time.monotonic() + 300
    ids = {long.json()["id"]: alpha, small.json()["id"]: beta}
    while any(
        client.get(f"/v1/audits/{i}", headers=h).json()["status"] in ("queued", "running")
        for i, h in ids.items()
    ):
        assert time.monotonic() < deadline, "the audits did not finish in 300 s"
        time.sleep(0.3)
    with app.state.sessions() as session:
        shards = session.scalars(select(AuditShard).order_by(AuditShard.started_at)).all()
    order = [(str(s.audit_id), s.shard) for s in shards]
    assert len(order) == 5
    assert order[1] == (small.json()["id"], 0), order
