"""/v1/probe-sets over HTTP on real databases and local storage: validation, dedupe, tenants."""

from __future__ import annotations

import hashlib
import io
import random
import tarfile
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor

from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import select

from service.probe_sets.tables import ProbeSetFile
from service.stored_files.repository import TeamFiles
from service.teams.tables import Team

from ..test_probe_sets import raw_png


def _png(color, size=(6, 4)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, "PNG")
    return buffer.getvalue()


def _noise_png(side=64) -> bytes:
    """Incompressible pixels, so the PNG is about side**2 bytes."""
    pixels = random.Random(side).randbytes(side * side)
    buffer = io.BytesIO()
    Image.frombytes("L", (side, side), pixels).save(buffer, "PNG")
    return buffer.getvalue()


def _zip(members) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            # A fixed timestamp: the same members must give the same bytes (dedupe).
            info = zipfile.ZipInfo(name, (2020, 1, 1, 0, 0, 0))
            archive.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED)
    return buffer.getvalue()


def _tgz(members) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


LABELLED = {
    "labels.csv": b"filename,label\na.png,0\nb.png,0\nc.png,1\n",
    "a.png": _png((255, 0, 0)),
    "b.png": _png((0, 255, 0)),
    "c.png": _png((0, 0, 255)),
}


def _auth(keys, name):
    return {"Authorization": f"Bearer {keys[name]}"}


def _upload(client, keys, key, data, filename="probes.zip", **fields):
    return client.post(
        "/v1/probe-sets",
        headers=_auth(keys, key),
        data={"name": "street", **fields},
        files={"file": (filename, data)},
    )


def _sha(data):
    return hashlib.sha256(data).hexdigest()


def _files_under(path):
    return [p for p in path.rglob("*") if p.is_file()] if path.exists() else []


def test_upload_validates_labels_and_deduplicates_per_team(app_and_keys):
    app, keys = app_and_keys
    client = TestClient(app)
    archive = _zip(LABELLED)
    first = _upload(client, keys, "alpha-write", archive)
    assert first.status_code == 201, first.text
    body = first.json()
    assert body["sha256"] == _sha(archive)
    assert body["size_bytes"] == len(archive)
    assert (body["image_count"], body["labelled"]) == (3, True)
    assert body["label_summary"] == {"0": 2, "1": 1}
    assert body["class_names"] is None
    assert body["deduplicated"] is False
    assert first.headers["location"] == f"/v1/probe-sets/{body['id']}"
    fetched = client.get(first.headers["location"], headers=_auth(keys, "alpha-read"))
    assert fetched.json()["label_summary"] == {"0": 2, "1": 1}

    again = _upload(client, keys, "alpha-write", archive, name="renamed")
    assert again.status_code == 200
    assert (again.json()["id"], again.json()["deduplicated"]) == (body["id"], True)

    # Class folders named by class_names: dog is index 0, cat index 1.
    folders = {"cat/1.png": _png((1, 1, 1)), "dog/2.png": _png((2, 2, 2))}
    folders["dog/3.png"] = _png((3, 3, 3))
    named = _upload(
        client,
        keys,
        "alpha-write",
        _tgz(folders),
        filename="probes.tar.gz",
        class_names='["dog", "cat"]',
    )
    assert named.status_code == 201, named.text
    assert named.json()["label_summary"] == {"0": 2, "1": 1}
    assert named.json()["class_names"] == ["dog", "cat"]
    unlabelled = _upload(client, keys, "alpha-write", _tgz({"x.png": _png((9, 9, 9))}))
    assert (unlabelled.json()["labelled"], unlabelled.json()["label_summary"]) == (False, {})

    # Another team: its own row for the same bytes, and it cannot see alpha's.
    theirs = _upload(client, keys, "beta-admin", archive)
    assert theirs.status_code == 201
    assert theirs.json()["id"] != body["id"]
    beta = _auth(keys, "beta-admin")
    assert client.get(f"/v1/probe-sets/{body['id']}", headers=beta).status_code == 404
    assert client.delete(f"/v1/probe-sets/{body['id']}", headers=beta).status_code == 404
    listed = client.get("/v1/probe-sets", headers=beta).json()
    assert [p["id"] for p in listed["items"]] == [theirs.json()["id"]]


def test_refused_archives_name_the_member_and_leave_nothing_behind(app_and_keys, tmp_path):
    app, keys = app_and_keys
    # Small enough for a zip bomb to trip, large enough for every other archive here.
    app.state.settings = app.state.settings.model_copy(update={"max_probe_set_bytes": 256 * 1024})
    client = TestClient(app)
    ok = _png((1, 1, 1))
    truncated = _noise_png()
    cases = {
        # name in the detail: archive
        "../evil.png": _zip({"ok.png": ok, "../evil.png": ok}),
        "bad.png": _zip({"ok.png": ok, "bad.png": b"not an image at all"}),
        "cut.png": _tgz({"ok.png": ok, "cut.png": truncated[: len(truncated) // 2]}),
        # 9000 x 9000 is over max_image_pixels (80M) yet under Pillow's own bomb warning.
        "bomb.png": _tgz({"ok.png": ok, "bomb.png": raw_png(9000, 9000, 1, 0, b"")}),
        "zeros.png": _zip({"ok.png": ok, "zeros.png": bytes(1024 * 1024)}),
        "labels.csv line 2": _zip({"labels.csv": b"filename,label\nok.png,cat\n", "ok.png": ok}),
        # a loose file is packed into a tar, then refused by name like any member
        "notes.txt": b"not an image",
    }
    for member, data in cases.items():
        filename = "notes.txt" if member == "notes.txt" else "probes.zip"
        response = _upload(client, keys, "alpha-write", data, filename=filename)
        assert response.status_code == 422, (member, response.text)
        assert response.headers["content-type"] == "application/problem+json"
        detail = response.json()["detail"]
        assert member in detail, detail
        assert str(tmp_path) not in detail  # no server paths leak
        assert not app.state.storage.exists(_sha(data)), member
    assert "max_image_pixels" in _upload(client, keys, "alpha-write", cases["bomb.png"]).text
    assert not [p for p in tmp_path.rglob("evil.png")]  # the zip slip wrote nothing anywhere
    assert _files_under(app.state.settings.data_dir / "tmp") == []
    assert _files_under(app.state.settings.data_dir / "artifacts" / "objects") == []
    assert client.get("/v1/probe-sets", headers=_auth(keys, "alpha-read")).json()["items"] == []


def test_bad_requests_store_nothing_but_keep_shared_bytes(app_and_keys):
    app, keys = app_and_keys
    client = TestClient(app)
    archive = _zip(LABELLED)
    nameless = client.post(
        "/v1/probe-sets", headers=_auth(keys, "alpha-write"), files={"file": ("p.zip", archive)}
    )
    assert nameless.status_code == 422
    assert nameless.headers["content-type"] == "application/problem+json"
    assert "name" in nameless.json()["detail"]
    assert not app.state.storage.exists(_sha(archive))
    bad_classes = _upload(client, keys, "alpha-write", archive, class_names="[cat")
    assert bad_classes.status_code == 422
    assert "class_names" in bad_classes.json()["detail"]
    duplicate_names = client.post(
        "/v1/probe-sets",
        headers=_auth(keys, "alpha-write"),
        data={"name": "x"},
        files=[("file", ("a.png", LABELLED["a.png"])), ("file", ("dir/a.png", LABELLED["b.png"]))],
    )
    assert duplicate_names.status_code == 422
    assert "distinct" in duplicate_names.json()["detail"]
    assert _upload(client, keys, "alpha-read", archive).status_code == 403
    assert not app.state.storage.exists(_sha(archive))
    # Beta holds these bytes: alpha's refused upload of them must not delete them.
    assert _upload(client, keys, "beta-admin", archive).status_code == 201
    nameless = client.post(
        "/v1/probe-sets", headers=_auth(keys, "alpha-write"), files={"file": ("p.zip", archive)}
    )
    assert nameless.status_code == 422
    assert app.state.storage.exists(_sha(archive))
    assert client.get("/v1/probe-sets", headers=_auth(keys, "alpha-read")).json()["items"] == []


def test_size_limit_is_enforced_while_streaming(app_and_keys):
    app, keys = app_and_keys
    app.state.settings = app.state.settings.model_copy(update={"max_probe_set_bytes": 4096})
    client = TestClient(app)
    response = _upload(client, keys, "alpha-write", _zip({"n.png": _noise_png(128)}))
    assert response.status_code == 413
    assert response.headers["content-type"] == "application/problem+json"
    assert "4096-byte limit" in response.json()["detail"]
    assert _files_under(app.state.settings.data_dir / "artifacts") == []


def test_list_pages_by_keyset_and_delete_keeps_shared_bytes(app_and_keys):
    app, keys = app_and_keys
    client = TestClient(app)
    archives = [_tgz({f"{i}.png": _png((i, i, i))}) for i in range(3)]
    ids = [
        _upload(client, keys, "alpha-write", data, name=f"set{i}").json()["id"]
        for i, data in enumerate(archives)
    ]
    reader = _auth(keys, "alpha-read")
    first = client.get("/v1/probe-sets?limit=2", headers=reader).json()
    assert [p["id"] for p in first["items"]] == ids[::-1][:2]
    second = client.get(
        f"/v1/probe-sets?limit=2&cursor={first['next_cursor']}", headers=reader
    ).json()
    assert [p["id"] for p in second["items"]] == [ids[0]]
    assert second["next_cursor"] is None
    named = client.get("/v1/probe-sets?name=set1", headers=reader).json()
    assert [p["id"] for p in named["items"]] == [ids[1]]
    assert client.get("/v1/probe-sets?cursor=garbage", headers=reader).status_code == 422
    # beta holds the same bytes as alpha's set2: deleting alpha's row must keep them.
    _upload(client, keys, "beta-admin", archives[2])
    writer = _auth(keys, "alpha-write")
    assert client.delete(f"/v1/probe-sets/{ids[2]}", headers=reader).status_code == 403
    assert client.delete(f"/v1/probe-sets/{ids[2]}", headers=writer).status_code == 204
    assert client.get(f"/v1/probe-sets/{ids[2]}", headers=reader).status_code == 404
    assert app.state.storage.exists(_sha(archives[2]))
    assert client.delete(f"/v1/probe-sets/{ids[0]}", headers=writer).status_code == 204
    assert not app.state.storage.exists(_sha(archives[0]))
    assert client.delete(f"/v1/probe-sets/{ids[0]}", headers=writer).status_code == 404


def test_loose_images_are_packed_reproducibly(app_and_keys):
    app, keys = app_and_keys
    client = TestClient(app)
    images = [("file", (name, LABELLED[name])) for name in ("a.png", "b.png")]
    first = client.post(
        "/v1/probe-sets", headers=_auth(keys, "alpha-write"), data={"name": "loose"}, files=images
    )
    assert first.status_code == 201, first.text
    assert first.json()["image_count"] == 2
    assert first.json()["labelled"] is False
    # The same images in another order pack to the same bytes: deduplicated.
    again = client.post(
        "/v1/probe-sets",
        headers=_auth(keys, "alpha-write"),
        data={"name": "loose"},
        files=images[::-1],
    )
    assert again.status_code == 200
    assert again.json()["sha256"] == first.json()["sha256"]
    single = client.post(
        "/v1/probe-sets",
        headers=_auth(keys, "alpha-write"),
        data={"name": "one"},
        files={"file": ("a.png", LABELLED["a.png"])},
    )
    assert single.status_code == 201
    assert single.json()["image_count"] == 1


def test_concurrent_uploads_of_the_same_bytes_all_get_the_one_stored_row(app_and_keys):
    """Uploads racing on the (team, sha256) constraint: one creates, the others are answered
    as deduplicated, and every id answered exists (commits happen before responses)."""
    app, keys = app_and_keys
    archive = _zip({f"{i}.png": _noise_png(256) for i in range(12)})  # slow enough to overlap
    start = threading.Barrier(4)

    def upload(_: int):
        # No `with`: entering a TestClient runs the app's lifespan, and four of them at once
        # would each stop the one shared embedded runner on exit.
        client = TestClient(app)
        start.wait()
        return _upload(client, keys, "alpha-write", archive)

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(upload, range(4)))
    assert sorted(a.status_code for a in answers) == [200, 200, 200, 201], [a.text for a in answers]
    assert {a.json()["id"] for a in answers} == {answers[0].json()["id"]}
    assert sum(a.json()["deduplicated"] for a in answers) == 3
    client = TestClient(app)
    got = client.get(f"/v1/probe-sets/{answers[0].json()['id']}", headers=_auth(keys, "alpha-read"))
    assert got.status_code == 200
    listed = client.get("/v1/probe-sets", headers=_auth(keys, "alpha-read")).json()["items"]
    assert len(listed) == 1


def test_the_loser_of_a_race_to_store_the_same_bytes_gets_the_winners_row(app_and_keys):
    """TeamFiles.add_once when its insert collides: the winner's row is still uncommitted
    when the loser looks, so the loser's insert waits on it and then fails the unique
    constraint; add_once answers with the winner's row instead of the error."""
    app, _ = app_and_keys
    sessions = app.state.sessions
    with sessions() as session:
        team_id = session.scalar(select(Team.id).where(Team.name == "alpha"))
    fields = {
        "name": "p",
        "size_bytes": 1,
        "image_count": 1,
        "labelled": False,
        "label_summary": {},
        "class_names": None,
    }
    winning = sessions()
    winner, added = TeamFiles(winning, team_id, ProbeSetFile).add_once(sha256="a" * 64, **fields)
    assert added

    def lose():
        with sessions() as session:
            row, added = TeamFiles(session, team_id, ProbeSetFile).add_once(
                sha256="a" * 64, **fields
            )
            return row.id, added

    with ThreadPoolExecutor(1) as pool:
        loser = pool.submit(lose)
        time.sleep(0.5)
        assert not loser.done()  # its insert waits on the winner's uncommitted row
        winning.commit()
        assert loser.result(timeout=30) == (winner.id, False)
    winning.close()
