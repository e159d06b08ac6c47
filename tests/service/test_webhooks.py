"""Outgoing webhooks against a real HTTP receiver on loopback, signatures checked by an
independent implementation, retries on 5xx, and SSRF refusals."""

from __future__ import annotations

import hashlib
import hmac
import json
import time

import pytest
from fastapi.testclient import TestClient

from service.outbound_webhooks.destinations import check_destination
from tests.hostile_models import segfaulting_model

from .loopback import LoopbackServer, QuietHandler
from .test_audits_api import _auth, _wait
from .test_compare_api import CONFIG, files  # noqa: F401 (fixture)


class Receiver(LoopbackServer):
    """Answers POSTs with the next status of `statuses` (then 200) and keeps what came."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = list(statuses)
        self.received: list[tuple[dict[str, str], bytes]] = []
        receiver = self

        class Handler(QuietHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.received.append((dict(self.headers), body))
                self.send_response(receiver.statuses.pop(0) if receiver.statuses else 200)
                self.end_headers()

        super().__init__(Handler)
        self.url = f"{self.base_url}/hook"


def _verify(secret: str, headers: dict[str, str], body: bytes) -> None:
    """The signature as a receiver would check it, written from the documented format."""
    fields = dict(part.split("=", 1) for part in headers["X-Shiftaudit-Signature"].split(","))
    expected = hmac.new(
        secret.encode(), fields["t"].encode() + b"." + body, hashlib.sha256
    ).hexdigest()
    assert hmac.compare_digest(fields["v1"], expected)
    assert abs(time.time() - int(fields["t"])) < 300


def _until(predicate, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_audit_events_are_signed_retried_and_logged(app_and_keys, files, tmp_path):  # noqa: F811
    app, keys = app_and_keys
    app.state.settings.webhook_allow_private = True  # the receiver is on loopback
    app.state.settings.reconcile_interval_s = 0.3
    receiver = Receiver([503])
    write = _auth(keys, "alpha-admin")  # webhooks and policies take an admin key
    try:
        with TestClient(app) as client:  # the lifespan runs the dispatcher
            subscribed = client.post(
                "/v1/webhooks",
                headers=write,
                json={
                    "url": receiver.url,
                    "events": ["audit.succeeded", "audit.failed", "audit.policy_failed"],
                },
            )
            assert subscribed.status_code == 201, subscribed.text
            hook = subscribed.json()
            assert "secret" not in client.get("/v1/webhooks", headers=write).json()[0]
            client.post(
                "/v1/policies",
                headers=write,
                json={
                    "name": "strict",
                    "thresholds": [{"metric": "flip_rate", "op": "<=", "value": 0}],
                },
            )
            probe_set_id = client.post(
                "/v1/probe-sets",
                headers=write,
                data={"name": "p"},
                files={"file": ("p.zip", files["phase"])},
            ).json()["id"]
            ids = {}
            for name, payload in (
                ("aliasing", files["aliasing"]),
                ("segfault", segfaulting_model(tmp_path).read_bytes()),
            ):
                model_id = client.post(
                    "/v1/models",
                    headers=write,
                    data={"name": name},
                    files={"file": ("m", payload)},
                ).json()["id"]
                ids[name] = client.post(
                    "/v1/audits",
                    headers=write,
                    json={
                        "model_id": model_id,
                        "probe_set_id": probe_set_id,
                        "config": CONFIG,
                        "policies": ["strict"],
                    },
                ).json()["id"]
                _wait(client, keys, ids[name])
            # succeeded + policy_failed for one, failed for the other; the first try got 503.
            _until(lambda: len(receiver.received) == 4)
            deliveries = client.get(
                f"/v1/webhooks/{hook['id']}/deliveries", headers=_auth(keys, "alpha-read")
            ).json()
            other = client.get(
                f"/v1/webhooks/{hook['id']}/deliveries", headers=_auth(keys, "beta-admin")
            )
    finally:
        receiver.close()
    events = []
    for headers, body in receiver.received:
        _verify(hook["secret"], headers, body)
        document = json.loads(body)
        assert document["id"] == headers["X-Shiftaudit-Delivery"]
        assert document["event"] == headers["X-Shiftaudit-Event"]
        events.append((document["event"], document["audit"]["id"], document["audit"]["status"]))
    assert sorted(set(events)) == sorted(
        [
            ("audit.failed", ids["segfault"], "failed"),
            ("audit.policy_failed", ids["aliasing"], "succeeded"),
            ("audit.succeeded", ids["aliasing"], "succeeded"),
        ]
    )
    assert len(events) == 4  # one of them twice: the 503 was retried
    assert sorted((d["status"], d["attempts"]) for d in deliveries) == [
        ("delivered", 1),
        ("delivered", 1),
        ("delivered", 2),
    ]
    retried = next(d for d in deliveries if d["attempts"] == 2)
    assert retried["last_status_code"] == 200
    assert other.status_code == 404


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://127.0.0.1:9/hook", "127.0.0.1, a private, loopback or reserved address"),
        ("http://localhost/hook", "a private, loopback or reserved address"),
        ("http://10.1.2.3/hook", "10.1.2.3, a private"),
        ("http://169.254.169.254/latest/meta-data", "169.254.169.254, a private"),
        ("http://[::1]/hook", "::1, a private"),
        ("ftp://example.org/hook", "expected an http:// or https:// URL"),
    ],
)
def test_internal_destinations_are_refused(app_and_keys, url, why):
    app, keys = app_and_keys
    response = TestClient(app).post(
        "/v1/webhooks",
        headers=_auth(keys, "alpha-admin"),
        json={"url": url, "events": ["audit.succeeded"]},
    )
    assert response.status_code == 422
    assert why in response.json()["detail"]


def test_a_delivery_connects_to_the_address_that_was_checked():
    pinned = check_destination("https://localhost:8443/hook?x=1", allow_private=True)
    assert pinned.url in ("https://127.0.0.1:8443/hook?x=1", "https://[::1]:8443/hook?x=1")
    assert (pinned.host_header, pinned.tls_server_name) == ("localhost:8443", "localhost")
