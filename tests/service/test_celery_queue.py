"""The Celery side of the queue boundary, on the machines' real Redis (its own DB number).

The API only produces: a committed audit becomes one `shiftaudit.run_shard` message per shard
on the queue of its device. Consuming them is the workers' job (tests/workers).
"""

from __future__ import annotations

import json

import pytest
import redis
from fastapi.testclient import TestClient

from service.app import create_app
from service.queue import CeleryQueue
from service.routing import ANY_QUEUE, GPU_QUEUE, RUN_SHARD_TASK, gpu_type_queue
from service.settings import Settings

from . import test_audits_api as audits_api
from .conftest import PEPPER

REDIS_URL = "redis://127.0.0.1:6379/13"
inputs = audits_api.inputs


@pytest.fixture
def broker():
    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


def test_a_committed_audit_becomes_one_message_for_the_workers(app_and_keys, inputs, broker):
    app, keys = app_and_keys
    app.state.queue.close()
    app.state.queue = CeleryQueue(REDIS_URL)
    client = TestClient(app)
    assert client.get("/readyz").json() == {"status": "ready", "database": "ok", "queue": "ok"}
    model_id, probe_set_id = audits_api._upload_inputs(client, keys, inputs)
    created = client.post(
        "/v1/audits",
        headers=audits_api._auth(keys, "alpha-write"),
        json={"model_id": model_id, "probe_set_id": probe_set_id},
    )
    assert created.status_code == 202
    messages = [json.loads(raw) for raw in broker.lrange(ANY_QUEUE, 0, -1)]  # device auto
    assert len(messages) == 1
    headers = messages[0]["headers"]
    assert headers["task"] == RUN_SHARD_TASK
    assert headers["id"] == f"{created.json()['id']}/0"
    assert app.state.queue.waiting() == {headers["id"]}
    assert created.json()["status"] == "queued"  # nothing runs in the API process


def test_an_audit_for_a_gpu_type_goes_to_that_types_queue_only(app_and_keys, inputs, broker):
    app, keys = app_and_keys
    app.state.queue.close()
    app.state.queue = CeleryQueue(REDIS_URL)
    app.state.settings.gpu_types = ["a100", "h100"]
    client = TestClient(app)
    model_id, probe_set_id = audits_api._upload_inputs(client, keys, inputs)

    def create(gpu_type, device="auto"):
        return client.post(
            "/v1/audits",
            headers=audits_api._auth(keys, "alpha-write"),
            json={
                "model_id": model_id,
                "probe_set_id": probe_set_id,
                "config": {"runtime": {"device": device}},
                "gpu_type": gpu_type,
            },
        )

    unknown = create("v100")
    assert unknown.status_code == 422
    assert "'v100' is not a GPU type of this deployment (a100, h100)" in unknown.json()["detail"]
    assert create("a100", device="cpu").status_code == 422
    assert create("A100!").status_code == 422  # not a queue name
    created = create("a100", device="cuda")
    assert created.status_code == 202, created.text
    assert created.json()["gpu_type"] == "a100"
    assert broker.llen(GPU_QUEUE) == 0
    assert broker.llen(ANY_QUEUE) == 0
    (message,) = [json.loads(raw) for raw in broker.lrange(gpu_type_queue("a100"), 0, -1)]
    assert message["headers"]["id"] == f"{created.json()['id']}/0"
    assert app.state.queue.waiting() == {message["headers"]["id"]}  # the reconciler sees it


def test_readiness_fails_when_the_broker_is_unreachable(tmp_path):
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'db.sqlite'}",
        secret_key=PEPPER,
        data_dir=tmp_path,
        redis_url="redis://127.0.0.1:1/0",
    )
    app = create_app(settings)
    assert isinstance(app.state.queue, CeleryQueue)
    response = TestClient(app).get("/readyz")
    assert response.status_code == 503
    assert "queue unreachable" in response.json()["detail"]
    app.state.engine.dispose()
