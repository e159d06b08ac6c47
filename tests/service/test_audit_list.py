"""GET /v1/audits: filters by status, model id and name, creation time, order, keyset pages."""

from __future__ import annotations

from fastapi.testclient import TestClient

from . import test_audits_api as audits_api
from .conftest import record_audits

inputs = audits_api.inputs  # the module-scoped model and probe-set files
_auth = audits_api._auth


def test_filters_order_and_pages(app_and_keys, inputs):
    app, keys = app_and_keys
    record_audits(app)
    client = TestClient(app)
    model_id, probe_set_id = audits_api._upload_inputs(client, keys, inputs)
    created = []
    for _ in range(5):
        response = client.post(
            "/v1/audits?reuse=false",
            headers=_auth(keys, "alpha-write"),
            json={"model_id": model_id, "probe_set_id": probe_set_id},
        )
        assert response.status_code == 202
        created.append(response.json())
    ids = [a["id"] for a in created]
    read = _auth(keys, "alpha-read")

    def listed(query: str) -> list[str]:
        response = client.get(f"/v1/audits?{query}", headers=read)
        assert response.status_code == 200, response.text
        return [a["id"] for a in response.json()["items"]]

    assert listed("") == ids[::-1]
    assert listed("order=oldest") == ids
    assert listed("model_name=aliasing") == ids[::-1]
    assert listed("model_name=other") == []
    assert listed(f"model_id={model_id}&status=queued") == ids[::-1]
    assert listed("status=succeeded") == []
    middle = created[2]["created_at"]
    assert listed(f"order=oldest&created_after={middle}") == ids[2:]
    assert listed(f"created_before={middle}") == ids[:2][::-1]
    # Oldest-first keyset pages cover every audit once.
    seen, cursor = [], None
    while True:
        query = "order=oldest&limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = client.get(f"/v1/audits?{query}", headers=read).json()
        seen += [a["id"] for a in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids
    assert client.get("/v1/audits?order=sideways", headers=read).status_code == 422
    assert client.get("/v1/audits", headers=_auth(keys, "beta-admin")).json()["items"] == []
