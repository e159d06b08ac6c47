"""Clear errors, never internals: inputs that answered 500 (and reset the keep-alive
connection) against a real `shiftaudit serve` now get a 4xx problem, or work."""

from __future__ import annotations

import io
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from PIL import Image

from service.demo import issue_key, wait_ready
from tests.client.conftest import service_environment
from tests.nets import GlobalPoolNet, export_program
from tests.service.loopback import free_port

CONFIG = {
    "preprocess": {"input_size": [16, 16], "resize": 16},
    "sweep": {"mode": "circular", "max_shift": 1},
    "runtime": {"device": "cpu"},
}


@dataclass
class Live:
    http: httpx.Client


@pytest.fixture(scope="module")
def live(tmp_path_factory) -> Iterator[Live]:
    data = tmp_path_factory.mktemp("live")
    env = service_environment(data)
    key = issue_key(env, team="hostile", scope="write")
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "shiftaudit_cli", "serve", "--port", str(port), "--no-access-log"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=url, timeout=60) as http:
            wait_ready(http, server)
            http.headers["Authorization"] = f"Bearer {key}"
            yield Live(http)
    finally:
        server.terminate()
        server.wait(timeout=30)


def _png(colour: int) -> bytes:
    encoded = io.BytesIO()
    Image.new("RGB", (16, 16), (colour, 0, 0)).save(encoded, format="PNG")
    return encoded.getvalue()


def _probe_set(live: Live, names: list[str]) -> httpx.Response:
    parts = [("file", (name, _png(i * 20), "image/png")) for i, name in enumerate(names)]
    return live.http.post("/v1/probe-sets", data={"name": "loose"}, files=parts)


def test_long_and_non_ascii_file_names_are_kept(live):
    names = ["x" * 120 + ".png", "é" * 60 + ".png", "short.png"]
    answer = _probe_set(live, names)
    assert answer.status_code == 201, answer.text
    assert answer.json()["image_count"] == 3


@pytest.mark.parametrize(
    ("disposition", "status", "message"),
    [
        ('form-data; name="file"; filename=".hidden.png"', 422, "is a hidden file"),
        ('form-data; name="file"; filename=""', 422, "needs a file name"),
        ('form-data; name="file"', 422, "needs a file name"),
        ("form-data; name=\"file\"; filename*=UTF-8''%C3%A9t%C3%A9.png", 201, None),
    ],
)
def test_image_part_names_get_the_message_that_fits(live, disposition, status, message):
    boundary = "hostileboundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="name"\r\n\r\nparts\r\n'
            f"--{boundary}\r\nContent-Disposition: {disposition}\r\nContent-Type: image/png\r\n\r\n"
        ).encode()
        + _png(7)
        + f"\r\n--{boundary}--\r\n".encode()
    )
    answer = live.http.post(
        "/v1/probe-sets",
        content=body,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert answer.status_code == status, answer.text
    if message is not None:
        assert message in answer.json()["detail"]


def _race(live: Live, model_id: str, probe_set_id: str) -> tuple[httpx.Response, ...]:
    """DELETE the model and POST an audit of it at the same moment: both answers."""
    start = threading.Barrier(2)
    body = {"model_id": model_id, "probe_set_id": probe_set_id, "config": CONFIG}
    calls = {
        "delete": lambda: live.http.delete(f"/v1/models/{model_id}"),
        "create": lambda: live.http.post("/v1/audits", json=body),
    }
    answers: dict[str, httpx.Response] = {}

    def run(name: str) -> None:
        start.wait()
        answers[name] = calls[name]()

    threads = [threading.Thread(target=run, args=(name,)) for name in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return answers["delete"], answers["create"]


def test_deleting_a_model_while_an_audit_of_it_is_created_is_never_a_500(live, tmp_path):
    probes = _probe_set(live, [f"p{i}.png" for i in range(2)])
    assert probes.status_code == 201, probes.text
    for round_ in range(10):
        payload = export_program(GlobalPoolNet(seed=round_), tmp_path / f"m{round_}.pt2")
        model = live.http.post(
            "/v1/models", data={"name": f"m{round_}"}, files={"file": ("m", payload.read_bytes())}
        )
        assert model.status_code == 201, model.text
        deleted, created = _race(live, model.json()["id"], probes.json()["id"])
        assert deleted.status_code in (204, 409), deleted.text
        assert created.status_code in (202, 404, 409), created.text
        # Never both: an audit of a model that is gone.
        assert (deleted.status_code, created.status_code) != (204, 202)
