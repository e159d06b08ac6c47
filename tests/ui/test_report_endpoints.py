"""The dashboard's endpoints: thumbnails, the static export, and the /ui pages' headers.

Thumbnails and the export are read against the live server of conftest.py (real succeeded
audits); the 409 of an unfinished audit on both databases with a queue that runs nothing.
"""

from __future__ import annotations

import io
import json
import re
import zipfile

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tests.nets import GlobalPoolNet, export_program, noise_probes
from tests.service.conftest import app_and_keys, database_url, postgres_url, record_audits

from .conftest import Server

__all__ = ["app_and_keys", "database_url", "postgres_url"]  # fixtures used here


def _png(response) -> np.ndarray:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    return np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB"))


def _thumbnail(http, audit: str, probe: str, dy, dx):
    return http.get(f"/v1/audits/{audit}/thumbnail", params={"probe": probe, "dy": dy, "dx": dx})


def test_a_thumbnail_is_the_probe_as_the_sweep_shifted_it(server: Server):
    audit = server.ids["audit_v1"]
    with server.client("alpha-read") as http:
        unshifted = _png(_thumbnail(http, audit, "phase0003.png", 0, 0))
        shifted = _thumbnail(http, audit, "phase0003.png", 1, -2)
        assert shifted.headers["cache-control"] == "private, max-age=86400"
        # 16x16 probes at input 16x16 with resize 16: the unshifted input is the image itself,
        # and a circular shift is numpy's roll of it.
        with Image.open(server.probes / "phase0003.png") as original:
            assert np.array_equal(unshifted, np.asarray(original.convert("RGB")))
        assert np.array_equal(_png(shifted), np.roll(unshifted, (1, -2), axis=(0, 1)))

        for params, status in [
            ({"dy": 3, "dx": 0}, 422),  # outside the sweep's -2..2
            ({"dy": 0.5, "dx": 0}, 422),  # not a shift of an integer grid
            ({"dy": "nan", "dx": 0}, 422),
            ({"dy": "one", "dx": 0}, 422),
            ({"dx": 0}, 422),
        ]:
            response = http.get(
                f"/v1/audits/{audit}/thumbnail", params={"probe": "phase0003.png", **params}
            )
            assert response.status_code == status, (params, response.text)
        missing = _thumbnail(http, audit, "../labels.csv", 0, 0)
        assert missing.status_code == 404
        assert "no image of this name" in missing.text
    with server.client("beta-read") as other_team:
        assert _thumbnail(other_team, audit, "phase0003.png", 0, 0).status_code == 404


def test_the_export_is_one_file_with_the_report_thumbnails_and_a_strict_policy(server: Server):
    audit = server.ids["audit_v2"]
    with server.client("alpha-read") as http:
        response = http.get(f"/v1/audits/{audit}/report.html")
        report = http.get(f"/v1/audits/{audit}/report").json()
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert response.headers["content-disposition"] == (
        f'attachment; filename="shiftaudit-report-{audit}.html"'
    )
    page = response.text
    assert 3_000_000 < len(page) < 8_000_000  # plotly.js is most of it

    policy = response.headers["content-security-policy"]
    assert f'content="{policy.replace(chr(39), "&#x27;")}"' in page  # the same as the <meta>
    script_src = next(p for p in policy.split("; ") if p.startswith("script-src"))
    assert script_src.count("'sha256-") == 4  # plotly, dom.js, charts.js, export.js
    assert "unsafe" not in script_src
    assert "default-src 'none'" in policy

    bundle = json.loads(
        re.search(r'<script type="application/json" id="bundle">(.*?)</script>', page, re.S).group(
            1
        )
    )
    assert bundle["report"] == report
    assert bundle["model"]["name"] == "tiny-net"
    expected: list[tuple[str, float, float]] = []
    for case in report["worst_cases"]:
        expected += [(case["probe"], 0.0, 0.0)]
        expected += [(case["probe"], *map(float, e["shift"])) for e in case["examples"]]
    shown = [(t["probe"], float(t["dy"]), float(t["dx"])) for t in bundle["thumbnails"]]
    assert shown == expected
    assert all(t["src"].startswith("data:image/png;base64,") for t in bundle["thumbnails"])

    # Nothing outside the scripts points anywhere: no src or href but data: and the page.
    markup = re.sub(r"<script\b[^>]*>.*?</script>", "", page, flags=re.S)
    assert re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', markup) == ["data:,"]  # no favicon
    with server.client("beta-read") as other_team:
        assert other_team.get(f"/v1/audits/{audit}/report.html").status_code == 404


def test_names_from_users_cannot_end_the_data_block():
    from service.ui.export import render_export

    hostile = "</script><script>alert(1)</script>\u2028<!--"
    page, _ = render_export({"report": {}, "thumbnails": [], "name": hostile}, title=hostile)
    data = re.search(r'id="bundle">(.*?)</script>', page, re.S).group(1)
    assert json.loads(data)["name"] == hostile
    assert "<" not in data
    assert ">" not in data
    assert "<title>&lt;/script&gt;" in page


def test_ui_pages_are_a_static_shell_under_a_strict_policy(server: Server):
    import httpx

    with httpx.Client(base_url=server.base) as http:  # no key: the pages hold no data
        for path in ("/ui", "/ui/", "/ui/audits/anything", "/ui/compare?audits=a,b"):
            response = http.get(path)
            assert response.status_code == 200, path
            policy = response.headers["content-security-policy"]
            assert "default-src 'self'" in policy
            assert "script-src 'self'" in policy
            assert "unsafe-eval" not in policy
            assert "set-cookie" not in response.headers
            assert not re.search(r"""(?:src|href)="(?:https?:)?//""", response.text), path
        bundle_url = re.search(r'<script src="(/ui/static/vendor/plotly-[^"]+)"', response.text)
        plotly = http.get(bundle_url.group(1))
        assert plotly.status_code == 200
        assert plotly.headers["cache-control"] == "public, max-age=31536000, immutable"
        assert plotly.content.lstrip().startswith(b"/**\n* plotly.js v")
        assert http.get("/ui/static/vendor/plotly-0.0.1.min.js").status_code == 404

        css = http.get("/ui/static/ui.css")
        assert css.headers["content-type"] == "text/css; charset=utf-8"
        again = http.get("/ui/static/ui.css", headers={"If-None-Match": css.headers["etag"]})
        assert again.status_code == 304
        for path in ("/ui/static/missing.js", "/ui/static/..%2Fpages.py", "/ui/static/%2e%2e"):
            assert http.get(path).status_code == 404, path
        schema = http.get("/openapi.json").json()
        assert not [p for p in schema["paths"] if p.startswith("/ui")]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("unfinished")
    model = export_program(GlobalPoolNet(), root / "m.pt2").read_bytes()
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as bundle:
        for path in sorted(noise_probes(root / "p", 2).iterdir()):
            bundle.write(path, path.name)
    return model, archive.getvalue()


def test_an_unfinished_audit_has_no_thumbnails_and_no_export(app_and_keys, inputs):
    app, keys = app_and_keys
    record_audits(app)  # the audit stays queued
    client = TestClient(app)
    write = {"Authorization": f"Bearer {keys['alpha-write']}"}
    model = client.post(
        "/v1/models", headers=write, data={"name": "m"}, files={"file": ("m.pt2", inputs[0])}
    ).json()["id"]
    probes = client.post(
        "/v1/probe-sets", headers=write, data={"name": "p"}, files={"file": ("p.zip", inputs[1])}
    ).json()["id"]
    audit = client.post(
        "/v1/audits", headers=write, json={"model_id": model, "probe_set_id": probes}
    ).json()["id"]
    for key, status in (("alpha-read", 409), ("beta-admin", 404)):
        headers = {"Authorization": f"Bearer {keys[key]}"}
        thumbnail = client.get(
            f"/v1/audits/{audit}/thumbnail",
            params={"probe": "probe0000.png", "dy": 0, "dx": 0},
            headers=headers,
        )
        export = client.get(f"/v1/audits/{audit}/report.html", headers=headers)
        assert (thumbnail.status_code, export.status_code) == (status, status)
        if status == 409:
            assert "the audit is queued" in thumbnail.json()["detail"]
