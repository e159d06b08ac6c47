"""The service on S3-compatible storage (a moto server on loopback): upload, audit, report.

Proves the deployment path where the API and the runner share nothing but the database and
the object store: every byte the runner audits comes from S3.
"""

from __future__ import annotations

import uuid

from fastapi.testclient import TestClient

from service.app import create_app
from service.migrate import upgrade
from service.settings import Settings
from service.teams.repository import create_key, get_or_create_team
from service.teams.tables import Scope
from shiftaudit.config import AuditConfig
from shiftaudit.engine import run_audit

from . import test_audits_api as audits_api
from .conftest import PEPPER
from .test_storage import BUCKET, REGION, _client, _fake_aws_env, s3_endpoint

inputs = audits_api.inputs
__all__ = ["_fake_aws_env", "inputs", "s3_endpoint"]  # fixtures used by name


def test_uploads_and_audits_go_through_s3(tmp_path, s3_endpoint, inputs):
    prefix = f"e2e-{uuid.uuid4().hex[:8]}/"
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    upgrade(url)
    settings = Settings(
        database_url=url,
        secret_key=PEPPER,
        data_dir=tmp_path / "data",
        storage_url=f"s3://{BUCKET}/{prefix}?endpoint_url={s3_endpoint}&region={REGION}",
    )
    app = create_app(settings)
    with app.state.sessions.begin() as session:
        team = get_or_create_team(session, name="alpha")
        _, write = create_key(session, team=team, scope=Scope.WRITE, pepper=PEPPER)
    keys = {"alpha-write": write, "alpha-read": write}
    try:
        client = TestClient(app)
        model_id, probe_set_id = audits_api._upload_inputs(client, keys, inputs)
        listed = _client(s3_endpoint).list_objects_v2(Bucket=BUCKET, Prefix=prefix)
        stored = sorted(item["Key"].rsplit("/", 1)[-1] for item in listed["Contents"])
        shas = sorted(
            client.get(path, headers=audits_api._auth(keys, "alpha-read")).json()["sha256"]
            for path in (f"/v1/models/{model_id}", f"/v1/probe-sets/{probe_set_id}")
        )
        assert stored == shas
        assert not (tmp_path / "data" / "artifacts").exists()  # nothing kept locally
        created = client.post(
            "/v1/audits",
            headers=audits_api._auth(keys, "alpha-write"),
            json={"model_id": model_id, "probe_set_id": probe_set_id, "config": audits_api.CONFIG},
        )
        audit = audits_api._wait(client, keys, created.json()["id"])
        assert audit["status"] == "succeeded", audit["error"]
        local = run_audit(*inputs, AuditConfig.model_validate(audits_api.CONFIG))
        assert audit["consistency"] == local.summary.all.consistency.value
    finally:
        app.state.queue.close()
        app.state.engine.dispose()
