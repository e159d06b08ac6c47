"""/metrics: request counters by route template, audits by status from the database."""

from __future__ import annotations

import uuid

from fastapi.testclient import TestClient
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from service.audits.tables import Audit
from service.models.tables import ModelFile
from service.probe_sets.tables import ProbeSetFile
from service.teams.tables import Team
from shiftaudit_api.audits import AuditStatus


def _auth(keys, name):
    return {"Authorization": f"Bearer {keys[name]}"}


def _samples(text):
    """{(sample name, frozenset of labels): value} of a scrape."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _requests(samples, method, route, status):
    labels = frozenset({"method": method, "route": route, "status": str(status)}.items())
    return samples.get(("shiftaudit_http_requests_total", labels))


def _add_audits(app, team_name, statuses):
    with app.state.sessions.begin() as session:
        team_id = session.scalar(select(Team.id).where(Team.name == team_name))
        sha = uuid.uuid4().hex * 2
        common = {"team_id": team_id, "name": "n", "sha256": sha, "size_bytes": 1}
        model = ModelFile(**common, version="1", format="onnx")
        probes = ProbeSetFile(**common, image_count=1, labelled=False, label_summary={})
        session.add_all([model, probes])
        session.flush()
        for status in statuses:
            session.add(
                Audit(
                    team_id=team_id,
                    model_id=model.id,
                    probe_set_id=probes.id,
                    config={},
                    status=status,
                )
            )


def test_requests_are_counted_by_route_template_never_by_raw_path(app_and_keys):
    app, keys = app_and_keys
    client = TestClient(app)
    model_id = uuid.uuid4()
    for _ in range(3):
        response = client.get(f"/v1/models/{model_id}", headers=_auth(keys, "alpha-read"))
        assert response.status_code == 404
    assert client.get("/v1/models", headers=_auth(keys, "alpha-read")).status_code == 200
    assert client.get("/v1/models").status_code == 401
    assert client.get(f"/no/such/{model_id}").status_code == 404
    assert client.request("BREW", "/v1/me").status_code == 405
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert str(model_id) not in response.text
    samples = _samples(response.text)
    assert _requests(samples, "GET", "/v1/models/{model_id}", 404) == 3
    assert _requests(samples, "GET", "/v1/models", 200) == 1
    assert _requests(samples, "GET", "/v1/models", 401) == 1
    assert _requests(samples, "GET", "<unmatched>", 404) == 1
    assert _requests(samples, "OTHER", "/v1/me", 405) == 1
    count = frozenset({"method": "GET", "route": "/v1/models/{model_id}", "status": "404"}.items())
    assert samples[("shiftaudit_http_request_duration_seconds_count", count)] == 3
    # The scrape itself is counted by the time of the next one.
    assert _requests(_samples(client.get("/metrics").text), "GET", "/metrics", 200) == 1


def _by_status(samples):
    return {
        status.value: samples[("shiftaudit_audits", frozenset({"status": status.value}.items()))]
        for status in AuditStatus
    }


def test_audit_gauges_count_every_teams_rows_at_scrape_time(app_and_keys):
    app, _ = app_and_keys
    client = TestClient(app)
    samples = _samples(client.get("/metrics").text)
    assert set(_by_status(samples).values()) == {0}
    assert samples[("shiftaudit_audit_queue_depth", frozenset())] == 0
    _add_audits(app, "alpha", [AuditStatus.QUEUED, AuditStatus.QUEUED, AuditStatus.SUCCEEDED])
    _add_audits(app, "beta", [AuditStatus.QUEUED, AuditStatus.RUNNING, AuditStatus.FAILED])
    samples = _samples(client.get("/metrics").text)
    assert _by_status(samples) == {
        "queued": 3,
        "running": 1,
        "succeeded": 1,
        "failed": 1,
        "cancelled": 0,
    }
    assert samples[("shiftaudit_audit_queue_depth", frozenset())] == 3
    assert samples[("shiftaudit_metrics_database_up", frozenset())] == 1


def test_metrics_is_left_out_of_the_openapi_schema_and_each_app_has_its_own_registry(
    app_and_keys,
):
    app, _ = app_and_keys
    assert "/metrics" not in TestClient(app).get("/openapi.json").json()["paths"]
    assert app.state.metrics_registry is not REGISTRY
    assert "shiftaudit_http_requests_total" not in {
        sample.name for family in REGISTRY.collect() for sample in family.samples
    }


def test_an_unhandled_error_is_counted_as_the_500_the_client_gets(app_and_keys):
    app, _ = app_and_keys

    def boom() -> None:
        raise RuntimeError("boom")

    app.add_api_route("/boom/{item}", boom, methods=["GET"])
    client = TestClient(app, raise_server_exceptions=False)
    assert client.get("/boom/1").status_code == 500
    samples = _samples(client.get("/metrics").text)
    assert _requests(samples, "GET", "/boom/{item}", 500) == 1
