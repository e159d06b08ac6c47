"""The pipeline client and `shiftaudit submit` against the Celery setup: `shiftaudit serve`
with DATABASE_URL and REDIS_URL (API only), a worker process, over HTTP."""

from __future__ import annotations

import json
import subprocess
import sys

import httpx
import pytest

from service.demo import wait_ready
from service.teams.repository import create_key
from service.teams.tables import Scope, Team
from shiftaudit_api.policies import Threshold
from shiftaudit_client import Client, api
from shiftaudit_client.cli import Exit
from tests.nets import GlobalPoolNet, export_program, phase_probes
from tests.service.loopback import free_port

from .conftest import CONFIG, PEPPER


def _admin_key(deployment) -> str:
    """An admin key of the deployment's team."""
    with deployment.sessions.begin() as session:
        team = session.query(Team).filter_by(name="alpha").one()
        _, key = create_key(session, team=team, scope=Scope.ADMIN, pepper=PEPPER)
    return key


@pytest.fixture
def served_api(deploy):
    """A Celery deployment with one CPU worker and its API as a real server process."""
    deployment = deploy()
    deployment.start_worker("w1")
    port = free_port()
    deployment.start(
        "api", [sys.executable, "-m", "shiftaudit_cli", "serve", "--port", str(port)], ready=None
    )
    url = f"http://127.0.0.1:{port}"
    with httpx.Client(base_url=url) as http:
        wait_ready(http, deployment.processes["api"])
    key = deployment.headers["Authorization"].removeprefix("Bearer ")
    return deployment, url, key


def test_submit_gates_on_a_policy_through_celery_workers(served_api, tmp_path):
    deployment, url, key = served_api
    model = export_program(GlobalPoolNet(stride=2), tmp_path / "aliasing.pt2")
    probes = phase_probes(tmp_path / "probes", 12)
    config = tmp_path / "config.json"
    config.write_text(json.dumps(CONFIG))
    with Client(url, _admin_key(deployment)) as client:  # policies take an admin key
        gate = Threshold(metric="consistency", op=">=", value=0.99)
        client.send(api.create_policy(name="gate", thresholds=[gate]))

    env = deployment.environment(SHIFTAUDIT_URL=url, SHIFTAUDIT_API_KEY=key)
    submit = ["submit", str(model), str(probes), "--config", str(config), "--policy", "gate"]
    result = subprocess.run(
        [sys.executable, "-m", "shiftaudit_cli", *submit, "--wait", "--timeout", "120"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == Exit.POLICY_FAILED, result.stderr + deployment.log("w1")
    audit_id = result.stdout.splitlines()[0].rsplit("/", 1)[-1]
    (shard,) = deployment.shards(audit_id)
    assert shard.worker is not None
    assert shard.worker.startswith("w1@test")  # the worker process ran it, not the API
    with Client(url, key) as client:
        audit = client.send(api.get_audit(shard.audit_id))
        assert audit.policy is not None
        assert audit.policy.status == "failed"
        report = client.send(api.get_report(audit.id))
    assert report.summary.all.consistency.value < 0.99
