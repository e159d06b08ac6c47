"""Every answer bounded: lists paged with a capped limit, list views without configs, and a
body of thousands of bad values answered in a few lines. Before, ?limit was ignored on
policies and webhooks, every audit listed its whole config, and the 422 echoed every error."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient

from tests.hostile.inputs import uploaded_ids
from tests.service.conftest import record_audits
from tests.service.test_audits_api import _auth


def _pages(client, headers, path):
    """Every item of a list, following its Link headers; and the pages' sizes."""
    items, sizes = [], []
    while path:
        answer = client.get(path, headers=headers)
        assert answer.status_code == 200, answer.text
        items += answer.json()
        sizes.append(len(answer.json()))
        link = answer.headers.get("link")
        path = re.fullmatch(r'<(.+)>; rel="next"', link).group(1) if link else None
    return items, sizes


def test_policies_and_webhooks_are_paged_with_a_capped_limit(app_and_keys):
    app, keys = app_and_keys
    app.state.settings.webhook_allow_private = True
    client = TestClient(app)
    admin, read = _auth(keys, "alpha-admin"), _auth(keys, "alpha-read")
    names = [f"policy-{i:03d}" for i in range(230)]
    for name in names:
        assert client.post("/v1/policies", headers=admin, json={"name": name}).status_code == 201
    for i in range(5):
        hook = {"url": f"http://127.0.0.1:9/hook-{i}", "events": ["audit.failed"]}
        assert client.post("/v1/webhooks", headers=admin, json=hook).status_code == 201
    policies, sizes = _pages(client, read, "/v1/policies")
    assert [p["name"] for p in policies] == names
    assert sizes == [100, 100, 30]
    assert client.get("/v1/policies?limit=500", headers=read).status_code == 422
    assert len(client.get("/v1/policies?limit=7", headers=read).json()) == 7
    hooks, sizes = _pages(client, read, "/v1/webhooks?limit=2")
    assert [h["url"] for h in hooks] == [f"http://127.0.0.1:9/hook-{i}" for i in range(5)]
    assert sizes == [2, 2, 1]
    other = client.get(f"/v1/webhooks?after={hooks[0]['id']}", headers=_auth(keys, "beta-admin"))
    assert other.status_code == 404  # another team's id is no cursor


def test_audit_lists_leave_out_the_config(app_and_keys, tmp_path):
    app, keys = app_and_keys
    record_audits(app)
    client = TestClient(app)
    write = _auth(keys, "alpha-write")
    ids = uploaded_ids(client, write, tmp_path)
    shifts = [[i % 64 - 32, i // 64 - 32] for i in range(4000)]  # a long but valid list
    body = ids | {"config": {"sweep": {"shifts": shifts}, "preprocess": {"input_size": [64, 64]}}}
    created = client.post("/v1/audits", headers=write, json=body)
    assert created.status_code == 202, created.text
    listed = client.get("/v1/audits", headers=write)
    (item,) = listed.json()["items"]
    assert "config" not in item
    assert len(listed.content) < 2_000
    full = client.get(f"/v1/audits/{item['id']}", headers=write).json()
    assert len(full["config"]["sweep"]["shifts"]) == 4000


def test_a_body_of_bad_values_gets_a_short_answer(app_and_keys):
    app, keys = app_and_keys
    client = TestClient(app)
    bad = {
        "model_id": "00000000-0000-0000-0000-000000000000",
        "probe_set_id": "00000000-0000-0000-0000-000000000000",
        "config": {"sweep": {"shifts": [["x", "y"]] * 3000}},
    }
    answer = client.post("/v1/audits", headers=_auth(keys, "alpha-write"), json=bad)
    assert answer.status_code == 422
    problem = answer.json()
    assert len(answer.content) < 10_000
    assert len(problem["errors"]) == 20
    assert problem["error_count"] > 3000
    assert problem["detail"].endswith(f"and {problem['error_count'] - 20} more")
