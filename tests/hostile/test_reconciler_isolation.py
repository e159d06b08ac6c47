"""One tenant's poisoned audit must not stall the others: before, an audit whose merge
raised (here a seed of -5, stored before seeds were validated) aborted every reconciler pass
before the merges and webhooks after it, for every team."""

from __future__ import annotations

import copy
import json
import time
import uuid
from datetime import timedelta

from fastapi.testclient import TestClient
from sqlalchemy import select

from service.audits.reconciler import policy_from, reconcile_once
from service.audits.tables import Audit, AuditShard
from service.db import utcnow
from shiftaudit_api.audits import AuditStatus
from tests.hostile.conftest import BOTH
from tests.service.test_audits_api import CONFIG, _auth, _upload_inputs
from tests.service.test_audits_api import inputs as inputs
from tests.service.test_webhooks import Receiver


def _run(client, keys, key, inputs):
    model_id, probe_set_id = _upload_inputs(client, keys, inputs, key=key)
    created = client.post(
        "/v1/audits",
        headers=_auth(keys, key),
        json={"model_id": model_id, "probe_set_id": probe_set_id, "config": CONFIG},
    )
    assert created.status_code == 202, created.text
    audit_id = created.json()["id"]
    deadline = time.monotonic() + 180
    while (audit := client.get(f"/v1/audits/{audit_id}", headers=_auth(keys, key)).json())[
        "status"
    ] in ("queued", "running"):
        assert time.monotonic() < deadline, "the audit did not finish in 180 s"
        time.sleep(0.2)
    assert audit["status"] == "succeeded", audit
    return uuid.UUID(audit_id)


def _copy_as_unmerged(session, source: uuid.UUID, *, config: dict) -> uuid.UUID:
    """A new running audit with the source's shards succeeded, as if its last worker died
    between its shard and the merge: the reconciler is to merge it."""
    original = session.get_one(Audit, source)
    copied = Audit(
        team_id=original.team_id,
        model_id=original.model_id,
        probe_set_id=original.probe_set_id,
        config=config,
        status=AuditStatus.RUNNING,
        progress=0.99,
        heartbeat_at=utcnow() - timedelta(hours=1),
    )
    session.add(copied)
    session.flush()
    for shard in session.scalars(select(AuditShard).where(AuditShard.audit_id == source)):
        session.add(
            AuditShard(
                audit_id=copied.id,
                shard=shard.shard,
                probe_start=shard.probe_start,
                probe_stop=shard.probe_stop,
                route=shard.route,
                status=AuditStatus.SUCCEEDED,
                result=copy.deepcopy(shard.result),
            )
        )
    return copied.id


@BOTH
def test_a_poisoned_audit_fails_alone_and_another_teams_merge_and_webhook_proceed(
    app_and_keys,
    inputs,
):
    app, keys = app_and_keys
    app.state.settings.webhook_allow_private = True  # the receiver is on loopback
    client = TestClient(app)
    receiver = Receiver([])
    try:
        alpha = _run(client, keys, "alpha-write", inputs)
        beta = _run(client, keys, "beta-admin", inputs)
        hook = client.post(
            "/v1/webhooks",
            headers=_auth(keys, "beta-admin"),
            json={"url": receiver.url, "events": ["audit.succeeded"]},
        )
        assert hook.status_code == 201, hook.text
        with app.state.sessions.begin() as session:
            poisoned_config = session.get_one(Audit, alpha).config | {"seed": -5}
            poisoned = _copy_as_unmerged(session, alpha, config=poisoned_config)
            healthy = _copy_as_unmerged(session, beta, config=session.get_one(Audit, beta).config)
        done = reconcile_once(
            app.state.sessions,
            app.state.queue,
            policy_from(app.state.settings),
            now=utcnow(),
        )
        with app.state.sessions() as session:
            failed = session.get_one(Audit, poisoned)
            merged = session.get_one(Audit, healthy)
            assert (failed.status, failed.error) == (
                AuditStatus.FAILED,
                "its shards could not be merged into a report (the worker's log has the details)",
            )
            assert merged.status is AuditStatus.SUCCEEDED
        assert done["merged"] == 2  # each audit's merge ended it, one failed, one succeeded
        assert done["webhook_delivered"] == 1
        ((_, body),) = receiver.received
        assert json.loads(body)["audit"]["id"] == str(healthy)
    finally:
        receiver.close()
