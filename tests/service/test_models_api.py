"""/v1/models over HTTP on real databases and local storage: uploads, dedupe, tenants."""

from __future__ import annotations

import hashlib

import pytest
import torch
from fastapi.testclient import TestClient

from ..nets import GlobalPoolNet, export_all, export_program


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("uploads")
    paths = export_all(GlobalPoolNet(), root)
    for seed in (1, 2):
        paths[f"program{seed}"] = export_program(GlobalPoolNet(seed=seed), root / f"m{seed}.pt2")
    torch.save(GlobalPoolNet().state_dict(), root / "weights.pt")
    paths["pickle"] = root / "weights.pt"
    return paths


def _auth(keys, name):
    return {"Authorization": f"Bearer {keys[name]}"}


def _upload(client, keys, key, path, **fields):
    data = {"name": "resnet", **fields}
    with open(path, "rb") as handle:
        return client.post(
            "/v1/models", headers=_auth(keys, key), data=data, files={"file": ("m", handle)}
        )


def _stored(app, sha):
    return app.state.storage.exists(sha)


def test_upload_sniffs_hashes_and_deduplicates_per_team(app_and_keys, files):
    app, keys = app_and_keys
    client = TestClient(app)
    first = _upload(
        client,
        keys,
        "alpha-write",
        files["onnx"],
        version="3",
        class_names='["cat", "dog", "a", "b", "c"]',
    )
    assert first.status_code == 201, first.text
    body = first.json()
    assert body["format"] == "onnx"
    assert body["sha256"] == hashlib.sha256(files["onnx"].read_bytes()).hexdigest()
    assert body["class_names"][:2] == ["cat", "dog"]
    assert body["deduplicated"] is False
    assert first.headers["location"] == f"/v1/models/{body['id']}"
    again = _upload(client, keys, "alpha-write", files["onnx"], name="renamed")
    assert again.status_code == 200
    assert again.json()["id"] == body["id"]
    assert again.json()["deduplicated"] is True
    for fmt in ("torchscript", "torch_export"):
        response = _upload(client, keys, "alpha-write", files[fmt])
        assert response.json()["format"] == fmt
    # Another team: its own row for the same bytes, and it cannot see alpha's.
    theirs = _upload(client, keys, "beta-admin", files["onnx"])
    assert theirs.status_code == 201
    assert theirs.json()["id"] != body["id"]
    assert (
        client.get(f"/v1/models/{body['id']}", headers=_auth(keys, "beta-admin")).status_code == 404
    )
    listed = client.get("/v1/models", headers=_auth(keys, "beta-admin")).json()
    assert [m["id"] for m in listed["items"]] == [theirs.json()["id"]]


def test_refused_uploads_leave_no_rows_and_no_bytes(app_and_keys, files):
    app, keys = app_and_keys
    client = TestClient(app)
    pickle_sha = hashlib.sha256(files["pickle"].read_bytes()).hexdigest()
    refused = _upload(client, keys, "alpha-write", files["pickle"])
    assert refused.status_code == 422
    assert refused.headers["content-type"] == "application/problem+json"
    assert "pickle" in refused.json()["detail"]
    assert not _stored(app, pickle_sha)
    nameless = client.post(
        "/v1/models",
        headers=_auth(keys, "alpha-write"),
        files={"file": ("m", files["onnx"].read_bytes())},
    )
    assert nameless.status_code == 422
    assert "name" in nameless.json()["detail"]
    assert not _stored(app, hashlib.sha256(files["onnx"].read_bytes()).hexdigest())
    no_file = client.post(
        "/v1/models",
        headers=_auth(keys, "alpha-write"),
        data={"name": "x"},
        files={"other": ("x", b"123")},
    )
    assert no_file.status_code == 422
    raw = client.post(
        "/v1/models",
        headers={**_auth(keys, "alpha-write"), "Content-Type": "application/octet-stream"},
        content=b"abc",
    )
    assert raw.status_code == 415
    read_only = _upload(client, keys, "alpha-read", files["onnx"])
    assert read_only.status_code == 403
    listed = client.get("/v1/models", headers=_auth(keys, "alpha-read")).json()
    assert listed["items"] == []


def test_size_limit_is_enforced_while_streaming(app_and_keys, files):
    app, keys = app_and_keys
    app.state.settings = app.state.settings.model_copy(update={"max_model_bytes": 4096})
    client = TestClient(app)
    response = _upload(client, keys, "alpha-write", files["torch_export"])
    assert response.status_code == 413
    assert "4096-byte limit" in response.json()["detail"]
    objects = app.state.settings.data_dir / "artifacts" / "objects"
    assert [p for p in objects.rglob("*") if p.is_file()] == []


def test_list_pages_by_keyset_and_delete_keeps_shared_bytes(app_and_keys, files):
    app, keys = app_and_keys
    client = TestClient(app)
    ids = [
        _upload(client, keys, "alpha-write", files[k]).json()["id"]
        for k in ("program1", "program2", "onnx")
    ]
    first = client.get("/v1/models?limit=2", headers=_auth(keys, "alpha-read")).json()
    assert [m["id"] for m in first["items"]] == ids[::-1][:2]
    second = client.get(
        f"/v1/models?limit=2&cursor={first['next_cursor']}", headers=_auth(keys, "alpha-read")
    ).json()
    assert [m["id"] for m in second["items"]] == [ids[0]]
    assert second["next_cursor"] is None
    bad = client.get("/v1/models?cursor=garbage", headers=_auth(keys, "alpha-read"))
    assert bad.status_code == 422
    # beta holds the same ONNX bytes: deleting alpha's row must keep them.
    _upload(client, keys, "beta-admin", files["onnx"])
    onnx_sha = hashlib.sha256(files["onnx"].read_bytes()).hexdigest()
    assert (
        client.delete(f"/v1/models/{ids[2]}", headers=_auth(keys, "alpha-read")).status_code == 403
    )
    assert (
        client.delete(f"/v1/models/{ids[2]}", headers=_auth(keys, "alpha-write")).status_code == 204
    )
    assert client.get(f"/v1/models/{ids[2]}", headers=_auth(keys, "alpha-read")).status_code == 404
    assert _stored(app, onnx_sha)
    program_sha = client.get(f"/v1/models/{ids[0]}", headers=_auth(keys, "alpha-read")).json()[
        "sha256"
    ]
    assert (
        client.delete(f"/v1/models/{ids[0]}", headers=_auth(keys, "alpha-write")).status_code == 204
    )
    assert not _stored(app, program_sha)


@pytest.mark.parametrize("path", ["/v1/models", "/v1/probe-sets"])
def test_a_truncated_body_is_refused_and_nothing_is_kept(app_and_keys, files, path):
    app, keys = app_and_keys
    whole = files["onnx"].read_bytes()
    body = (
        b'--cut\r\nContent-Disposition: form-data; name="name"\r\n\r\nx\r\n'
        b'--cut\r\nContent-Disposition: form-data; name="file"; filename="m.onnx"\r\n\r\n'
        + whole[: len(whole) // 2]  # the client died here: no closing boundary
    )
    response = TestClient(app).post(
        path,
        headers={**_auth(keys, "alpha-write"), "Content-Type": "multipart/form-data; boundary=cut"},
        content=body,
    )
    assert response.status_code == 400
    assert "closing boundary" in response.json()["detail"]
    stored = app.state.settings.data_dir / "artifacts" / "objects"
    assert [p for p in stored.rglob("*") if p.is_file()] == []
    assert TestClient(app).get(path, headers=_auth(keys, "alpha-read")).json()["items"] == []


def test_upload_idempotency_key_replays_and_refuses_other_bytes(app_and_keys, files):
    app, keys = app_and_keys
    client = TestClient(app)
    headers = {**_auth(keys, "alpha-write"), "Idempotency-Key": "upload-1"}

    def post(path):
        with open(path, "rb") as handle:
            return client.post(
                "/v1/models", headers=headers, data={"name": "n"}, files={"file": ("m", handle)}
            )

    first = post(files["program1"])
    assert first.status_code == 201
    again = post(files["program1"])
    assert again.status_code == 201  # the original response, not a 200 "deduplicated"
    assert again.json() == first.json()
    assert again.headers["idempotency-replayed"] == "true"
    other = post(files["program2"])
    assert other.status_code == 422
    assert "different request" in other.json()["detail"]
    other_sha = hashlib.sha256(files["program2"].read_bytes()).hexdigest()
    assert not _stored(app, other_sha)  # refused bytes are not kept
    listed = client.get("/v1/models", headers=_auth(keys, "alpha-read")).json()["items"]
    assert [m["id"] for m in listed] == [first.json()["id"]]
    bad_key = client.post(
        "/v1/models",
        headers={**headers, "Idempotency-Key": "x" * 201},
        data={"name": "n"},
        files={"file": ("m", b"123")},
    )
    assert bad_key.status_code == 422
