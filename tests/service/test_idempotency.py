"""Idempotency-Key on POST /v1/audits and /cancel, and reuse of identical succeeded audits."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from service.audits.reconciler import policy_from, reconcile_once
from service.db import utcnow
from service.idempotency import KEY_LIFETIME, Idempotency, IdempotencyKey

from . import test_audits_api as audits_api
from .conftest import record_audits
from .test_audits_api import CONFIG, _auth, _upload_inputs, _wait

inputs = audits_api.inputs  # the module-scoped model and probe-set files


@pytest.fixture
def quiet(app_and_keys, inputs):
    """A client, keys, alpha's uploaded inputs, and a queue that only records."""
    app, keys = app_and_keys
    record_audits(app)
    client = TestClient(app)
    model_id, probe_set_id = _upload_inputs(client, keys, inputs)
    return client, keys, app.state.queue, {"model_id": model_id, "probe_set_id": probe_set_id}


def _post(client, keys, body, key=None, team="alpha-write", query=""):
    headers = _auth(keys, team)
    if key is not None:
        headers["Idempotency-Key"] = key
    return client.post(f"/v1/audits{query}", headers=headers, json=body)


def _count(client, keys, team="alpha-read"):
    return len(client.get("/v1/audits", headers=_auth(keys, team)).json()["items"])


def test_a_retry_with_the_same_key_replays_the_first_response(quiet):
    client, keys, queue, ids = quiet
    body = {**ids, "config": CONFIG}
    first = _post(client, keys, body, key="order-42")
    assert first.status_code == 202, first.text
    assert "idempotency-replayed" not in first.headers
    # Same request, keys in another order: the same canonical form.
    retry = _post(client, keys, dict(reversed(list(body.items()))), key="order-42")
    assert retry.status_code == 202
    assert retry.json() == first.json()
    assert retry.headers["idempotency-replayed"] == "true"
    assert retry.headers["location"] == first.headers["location"]
    assert _count(client, keys) == 1
    assert queue.enqueued == [uuid.UUID(first.json()["id"])]

    other = _post(client, keys, {**body, "config": {**CONFIG, "bootstrap": 200}}, key="order-42")
    assert other.status_code == 422
    assert other.headers["content-type"] == "application/problem+json"
    assert "different request" in other.json()["detail"]
    elsewhere = _post(client, keys, body, key="order-42", query="?reuse=false")
    assert elsewhere.status_code == 422  # the query is part of the request
    assert _count(client, keys) == 1

    # Without a key every POST queues a new audit.
    assert _post(client, keys, body).status_code == 202
    assert _count(client, keys) == 2


def test_keys_are_scoped_per_team(quiet, inputs):
    client, keys, queue, ids = quiet
    beta_model, beta_probes = _upload_inputs(client, keys, inputs, key="beta-admin")
    alpha = _post(client, keys, ids, key="shared")
    beta = _post(
        client,
        keys,
        {"model_id": beta_model, "probe_set_id": beta_probes},
        key="shared",
        team="beta-admin",
    )
    assert alpha.status_code == beta.status_code == 202
    assert "idempotency-replayed" not in beta.headers
    assert alpha.json()["id"] != beta.json()["id"]
    assert len(queue.enqueued) == 2
    assert _count(client, keys, team="beta-admin") == 1


def test_bad_keys_are_refused(quiet):
    client, keys, queue, ids = quiet
    for bad in ("", "has space", "x" * 201, "caf\u00e9".encode("latin-1")):
        headers = {**_auth(keys, "alpha-write"), "Idempotency-Key": bad}
        response = client.post("/v1/audits", headers=headers, json=ids)
        assert response.status_code == 422, bad
    assert _post(client, keys, ids, key="~" * 200).status_code == 202
    assert len(queue.enqueued) == 1
    assert _count(client, keys) == 1


def test_a_request_losing_the_race_for_its_key_replays_the_winner(quiet, monkeypatch):
    client, keys, queue, ids = quiet
    first = _post(client, keys, ids, key="race")
    real_replay = Idempotency.replay
    calls = []

    def late_replay(self, session, team_id):
        calls.append(1)
        # The first look-up misses, as if the winner had not committed yet.
        return None if len(calls) == 1 else real_replay(self, session, team_id)

    monkeypatch.setattr(Idempotency, "replay", late_replay)
    second = _post(client, keys, ids, key="race")
    assert len(calls) == 2  # the unique constraint fired; the loser looked again
    assert second.status_code == 202
    assert second.json() == first.json()
    assert second.headers["idempotency-replayed"] == "true"
    assert _count(client, keys) == 1
    assert len(queue.enqueued) == 1


def _age_keys(app, by: timedelta) -> None:
    """Move every stored key's creation time back by `by`, as if that much time had passed."""
    with app.state.sessions.begin() as session:
        for row in session.scalars(select(IdempotencyKey)):
            row.created_at -= by


def test_a_key_acts_again_once_its_lifetime_has_passed(quiet):
    client, keys, queue, ids = quiet
    first = _post(client, keys, ids, key="nightly")
    _age_keys(client.app, KEY_LIFETIME - timedelta(minutes=1))
    assert _post(client, keys, ids, key="nightly").headers["idempotency-replayed"] == "true"
    _age_keys(client.app, timedelta(minutes=2))
    # Expired: neither replayed nor refused as "a different request"; it acts.
    other = {**ids, "config": {**CONFIG, "bootstrap": 200}}
    again = _post(client, keys, other, key="nightly")
    assert again.status_code == 202, again.text
    assert "idempotency-replayed" not in again.headers
    assert again.json()["id"] != first.json()["id"]
    assert len(queue.enqueued) == 2
    replayed = _post(client, keys, other, key="nightly")
    assert replayed.headers["idempotency-replayed"] == "true"
    assert replayed.json() == again.json()


def test_the_reconciler_deletes_expired_keys_only(quiet):
    client, keys, queue, ids = quiet
    app = client.app
    _post(client, keys, ids, key="old")
    _age_keys(app, KEY_LIFETIME + timedelta(seconds=1))
    _post(client, keys, {**ids, "config": {**CONFIG, "bootstrap": 200}}, key="new")
    policy = policy_from(app.state.settings)
    done = reconcile_once(app.state.sessions, queue, policy, now=utcnow())
    assert done["idempotency_keys_expired"] == 1
    with app.state.sessions() as session:
        assert session.scalars(select(IdempotencyKey.key)).all() == ["new"]
    assert "idempotency_keys_expired" not in reconcile_once(
        app.state.sessions, queue, policy, now=utcnow()
    )


def test_cancel_with_a_key_replays(quiet):
    client, keys, _, ids = quiet
    audit_id = _post(client, keys, ids).json()["id"]
    path = f"/v1/audits/{audit_id}/cancel"
    headers = {**_auth(keys, "alpha-write"), "Idempotency-Key": "stop-it"}
    cancelled = client.post(path, headers=headers)
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled"
    again = client.post(path, headers=headers)
    assert again.status_code == 200
    assert again.json() == cancelled.json()
    assert again.headers["idempotency-replayed"] == "true"
    plain = client.post(path, headers=_auth(keys, "alpha-write"))
    assert plain.status_code == 200  # cancelling a cancelled audit was always a 200
    assert "idempotency-replayed" not in plain.headers
    # The key belongs to the cancel request now: creating with it is another request.
    assert _post(client, keys, ids, key="stop-it").status_code == 422


def test_an_identical_request_reuses_a_succeeded_audit_unless_told_not_to(app_and_keys, inputs):
    app, keys = app_and_keys
    client = TestClient(app)
    model_id, probe_set_id = _upload_inputs(client, keys, inputs)
    body = {"model_id": model_id, "probe_set_id": probe_set_id, "config": CONFIG}
    first = _post(client, keys, body)
    assert first.status_code == 202
    assert first.json()["reused"] is False
    assert _wait(client, keys, first.json()["id"])["status"] == "succeeded"

    # The same config spelt out differently (a default made explicit) is the same request.
    explicit = {**CONFIG, "sweep": {**CONFIG["sweep"], "step": 1}, "seed": 0}
    again = _post(client, keys, {**body, "config": explicit}, key="again")
    assert again.status_code == 200, again.text
    assert again.json()["reused"] is True
    assert again.json()["id"] == first.json()["id"]
    assert again.json()["status"] == "succeeded"
    replayed = _post(client, keys, {**body, "config": explicit}, key="again")
    assert replayed.status_code == 200
    assert replayed.json() == again.json()
    assert _count(client, keys) == 1

    fresh = _post(client, keys, body, query="?reuse=false")
    assert fresh.status_code == 202
    assert fresh.json()["reused"] is False
    assert fresh.json()["id"] != first.json()["id"]
    assert _count(client, keys) == 2
    # Another config is another request.
    other = _post(client, keys, {**body, "config": {**CONFIG, "bootstrap": 50}})
    assert other.status_code == 202
    # Another team never sees alpha's audits, identical inputs or not.
    beta_model, beta_probes = _upload_inputs(client, keys, inputs, key="beta-admin")
    beta = _post(
        client,
        keys,
        {"model_id": beta_model, "probe_set_id": beta_probes, "config": CONFIG},
        team="beta-admin",
    )
    assert beta.status_code == 202


def test_failed_audits_are_never_reused(app_and_keys, inputs):
    app, keys = app_and_keys
    client = TestClient(app)
    model_id, probe_set_id = _upload_inputs(client, keys, inputs)
    wrong_size = {**CONFIG, "preprocess": {"input_size": [32, 32]}}
    body = {"model_id": model_id, "probe_set_id": probe_set_id, "config": wrong_size}
    first = _post(client, keys, body)
    assert _wait(client, keys, first.json()["id"])["status"] == "failed"
    second = _post(client, keys, body)
    assert second.status_code == 202
    assert second.json()["id"] != first.json()["id"]
