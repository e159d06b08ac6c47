"""The typed client against a live service (`shiftaudit serve`), and its retry policy
against a misbehaving server on loopback."""

from __future__ import annotations

import asyncio
import inspect
import tarfile
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest

from shiftaudit.archives import pack_directory
from shiftaudit.config import AuditConfig
from shiftaudit_api.policies import Threshold
from shiftaudit_client import (
    ApiError,
    AsyncClient,
    Client,
    RetryPolicy,
    ServiceUnavailable,
    WaitTimeout,
    api,
)
from tests.service.loopback import LoopbackServer, QuietHandler

from .conftest import CONFIG

# Probes for orchestrators and Prometheus, and the receiver MLflow itself calls (signed).
OPERATIONS_WITHOUT_CLIENT = {("GET", "/healthz"), ("GET", "/metrics"), ("POST", "/v1/hooks/mlflow")}
PLACEHOLDER = uuid.UUID(int=0)


def _placeholder(annotation: str, name: str) -> object:
    """A value for a required parameter: ids, paths and names that show in the path."""
    if name == "key_id":  # a key's public id is a string, in the path like the uuids
        return str(PLACEHOLDER)
    if "uuid.UUID" in annotation and "Sequence" in annotation:
        return [PLACEHOLDER]
    if "Sequence" in annotation:
        return ["audit.failed"]
    return {"uuid.UUID": PLACEHOLDER, "Path": Path("x")}.get(annotation, "{name}")


def _calls_by_operation() -> dict[tuple[str, str], str]:
    """(method, path template) of every call constructor in `api`."""
    found = {}
    for name, function in inspect.getmembers(api, inspect.isfunction):
        if function.__module__ != api.__name__ or name.startswith("_"):
            continue
        required = {
            parameter.name: _placeholder(str(parameter.annotation), parameter.name)
            for parameter in inspect.signature(function).parameters.values()
            if parameter.default is inspect.Parameter.empty
        }
        call = function(**required)
        found[(call.method, call.path.replace(str(PLACEHOLDER), "{id}"))] = name
    return found


def test_the_client_has_a_call_for_every_operation_the_service_publishes(served):
    published = set()
    for path, operations in httpx.get(f"{served.url}/openapi.json").json()["paths"].items():
        for method in operations:
            template = path
            for part in path.split("/"):
                if part.startswith("{") and part != "{name}":
                    template = template.replace(part, "{id}")
            published.add((method.upper(), template))
    covered = set(_calls_by_operation())
    assert published - OPERATIONS_WITHOUT_CLIENT - covered == set()
    assert covered - published == set()


def test_a_pipeline_round_trip_through_the_sync_client(served, inputs, tmp_path):
    probes = pack_directory(inputs["probes"], tmp_path / "probes.tar")
    sent: list[tuple[int, int]] = []
    # An admin key: the round trip also creates policies, hook settings and webhooks.
    with Client(served.url, served.admin_key) as client:
        assert client.send(api.me()).team == "pipelines"
        assert client.send(api.ready())["status"] == "ready"
        model = client.send(
            api.upload_model(inputs["aliasing"], name="net", version="2"),
            progress=lambda done, total: sent.append((done, total)),
        )
        size = inputs["aliasing"].stat().st_size
        assert sent[-1] == (size, size)
        assert [done for done, _ in sent] == sorted(done for done, _ in sent)
        assert model.format == "torch_export"
        assert not model.deduplicated
        probe_set = client.send(api.upload_probe_set(probes, name="phase"))
        assert probe_set.image_count == 12

        sha = model.sha256
        assert [m.id for m in client.send(api.list_models(sha256=sha)).items] == [model.id]
        assert client.send(api.list_models(sha256="0" * 64)).items == []
        assert client.send(api.get_model(model.id)).version == "2"
        listed = client.send(api.list_probe_sets(sha256=probe_set.sha256)).items
        assert [p.id for p in listed] == [probe_set.id]
        assert client.send(api.get_probe_set(probe_set.id)).labelled is False

        gate = [Threshold(metric="consistency", op=">=", value=0.99)]
        client.send(api.create_policy(name="gate", thresholds=gate))
        assert [p.name for p in client.send(api.list_policies())] == ["gate"]
        assert client.send(api.get_policy("gate")).thresholds == gate

        config = AuditConfig.model_validate(CONFIG)
        audit = client.send(
            api.create_audit(
                model_id=model.id, probe_set_id=probe_set.id, config=config, policies=["gate"]
            )
        )
        seen = []
        finished = client.wait(audit.id, timeout=120, poll_s=0.2, on_update=seen.append)
        assert finished.status == "succeeded", finished.error
        assert seen[-1].status == "succeeded"
        assert finished.policy is not None
        assert finished.policy.status == "failed"  # stride 2 aliases: consistency < 0.99
        report = client.send(api.get_report(audit.id))
        assert report.summary.all.consistency.value == pytest.approx(finished.consistency)
        page = client.send(api.get_report_html(audit.id))
        assert page.lstrip().lower().startswith("<!doctype html>")
        assert str(audit.id) in page
        worst = report.worst_cases[0]
        dy, dx = worst.examples[0].shift
        png = client.send(api.get_thumbnail(audit.id, probe=worst.probe, dy=dy, dx=dx))
        assert png.startswith(b"\x89PNG")

        again = client.send(
            api.create_audit(
                model_id=model.id, probe_set_id=probe_set.id, config=config, reuse=False
            )
        )
        client.wait(again.id, timeout=120, poll_s=0.2)
        comparison = client.send(api.compare([audit.id, again.id]))
        assert comparison.comparisons[0].pairing == "paired"
        assert not any(d.significant for d in comparison.comparisons[0].deltas)
        trend = client.send(api.trend(model_name="net"))
        assert [(p.version, p.audit and p.audit.id) for p in trend] == [("2", again.id)]
        page = client.send(api.list_audits(model_name="net", order="oldest", limit=1))
        assert [a.id for a in page.items] == [audit.id]
        assert page.next_cursor is not None
        rest = client.send(
            api.list_audits(model_name="net", order="oldest", cursor=page.next_cursor)
        )
        assert [a.id for a in rest.items] == [again.id]

        with pytest.raises(ApiError) as finished_already:
            client.send(api.cancel_audit(audit.id))
        assert finished_already.value.status == 409
        with pytest.raises(ApiError) as in_use:
            client.send(api.delete_model(model.id))
        assert in_use.value.status == 409
        assert "still used by audits" in in_use.value.detail

        defaults = client.send(
            api.set_hook_defaults(probe_set_id=probe_set.id, config=config, policies=["gate"])
        )
        assert client.send(api.get_hook_defaults()) == defaults
        with pytest.raises(ApiError) as not_allowed:
            client.send(api.generic_hook(model_url="http://x/m.pt2", name="net", version="3"))
        assert not_allowed.value.status == 422

        with pytest.raises(ApiError) as not_listed:  # the operator allowed no tracking server
            client.send(api.connect_mlflow(tracking_uri="https://mlflow.example"))
        assert not_listed.value.status == 422
        for call in (api.get_mlflow_connection(), api.delete_mlflow_connection()):
            with pytest.raises(ApiError) as absent:
                client.send(call)
            assert absent.value.status == 404

        with pytest.raises(ApiError) as private:
            client.send(api.create_webhook(url="http://127.0.0.1:9/hook", events=["audit.failed"]))
        assert private.value.status == 422
        assert client.send(api.list_webhooks()) == []
        with pytest.raises(ApiError) as unknown:
            client.send(api.webhook_deliveries(uuid.uuid4()))
        assert unknown.value.status == 404
        with pytest.raises(ApiError):
            client.send(api.delete_webhook(uuid.uuid4()))

        client.send(api.delete_policy("gate"))
        assert client.send(api.list_policies()) == []
        spare = client.send(api.upload_probe_set(probes, name="again"))
        assert spare.deduplicated
        assert spare.id == probe_set.id


def test_the_async_client_runs_the_same_calls(served, inputs):
    async def pipeline():
        async with AsyncClient(served.url, served.key) as client:
            model = await client.send(api.upload_model(inputs["invariant"], name="inv"))
            probes = await client.send(api.list_probe_sets(name="phase"))
            config = AuditConfig.model_validate(CONFIG)
            audits = await asyncio.gather(
                *(
                    client.send(
                        api.create_audit(
                            model_id=model.id,
                            probe_set_id=probes.items[0].id,
                            config=config,
                            reuse=False,
                        )
                    )
                    for _ in range(2)
                )
            )
            return await asyncio.gather(
                *(client.wait(a.id, timeout=120, poll_s=0.2) for a in audits)
            )

    finished = asyncio.run(pipeline())
    assert [a.status for a in finished] == ["succeeded", "succeeded"]
    assert [a.consistency for a in finished] == [1.0, 1.0]  # stride 1, circular: invariant


def test_waiting_gives_up_at_the_timeout_while_the_audit_goes_on(served, inputs):
    with Client(served.url, served.key) as client:
        model = client.send(api.upload_model(inputs["invariant"], name="inv"))
        probe_set = client.send(api.list_probe_sets(name="phase")).items[0]
        config = AuditConfig.model_validate({**CONFIG, "seed": 7})
        audit = client.send(
            api.create_audit(
                model_id=model.id, probe_set_id=probe_set.id, config=config, reuse=False
            )
        )
        with pytest.raises(WaitTimeout, match="still"):
            client.wait(audit.id, timeout=0)
        assert client.wait(audit.id, timeout=120, poll_s=0.2).status == "succeeded"


def test_a_wrong_key_is_an_api_error_not_a_retry(served):
    with Client(served.url, "sa_0000000000000000_" + "x" * 43) as client:
        started = time.monotonic()
        with pytest.raises(ApiError) as refused:
            client.send(api.me())
    assert refused.value.status == 401
    assert time.monotonic() - started < 2


class FlakyServer(LoopbackServer):
    """Answers `failures` requests with `status` (and Retry-After), then 200 {}."""

    def __init__(self, failures: int, status: int, retry_after: str | None) -> None:
        server = self
        self.requests: list[tuple[float, str | None]] = []
        self.lock = threading.Lock()

        class Handler(QuietHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with server.lock:
                    server.requests.append((time.monotonic(), self.headers.get("Idempotency-Key")))
                    failing = len(server.requests) <= failures
                body = b'{"team": "t", "scope": "write"}'
                self.send_response(status if failing else 200)
                if failing and retry_after is not None:
                    self.send_header("Retry-After", retry_after)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        super().__init__(Handler)


def _post_me() -> api.Call:
    return api.Call("POST", "/v1/me", api.me().parse)


def test_503_and_429_are_retried_after_the_servers_retry_after_with_one_idempotency_key():
    server = FlakyServer(failures=2, status=503, retry_after="1")
    try:
        with Client(server.base_url, "k", retry=RetryPolicy(first_delay_s=0.01)) as client:
            assert client.send(_post_me()).team == "t"
    finally:
        server.close()
    times, keys = zip(*server.requests, strict=True)
    assert len(times) == 3
    assert times[1] - times[0] >= 0.95  # Retry-After: 1
    assert times[2] - times[1] >= 0.95
    assert len(set(keys)) == 1
    assert keys[0]


def test_an_http_date_retry_after_is_honoured_by_the_async_client():
    when = time.time() + 2
    date = __import__("email.utils").utils.formatdate(when, usegmt=True)
    server = FlakyServer(failures=1, status=429, retry_after=date)
    try:

        async def call():
            async with AsyncClient(server.base_url, "k") as client:
                return await client.send(_post_me())

        assert asyncio.run(call()).scope == "write"
    finally:
        server.close()
    (first, _), (second, _) = server.requests
    assert second - first >= 0.9


def test_a_server_that_stays_unavailable_raises_service_unavailable():
    server = FlakyServer(failures=100, status=503, retry_after=None)
    try:
        policy = RetryPolicy(attempts=3, first_delay_s=0.01)
        with (
            Client(server.base_url, "k", retry=policy) as client,
            pytest.raises(ServiceUnavailable, match="HTTP 503"),
        ):
            client.send(_post_me())
    finally:
        server.close()
    assert len(server.requests) == 3


def test_a_closed_port_raises_service_unavailable_after_the_retries():
    from tests.workers.conftest import free_port

    policy = RetryPolicy(attempts=2, first_delay_s=0.01)
    with (
        Client(f"http://127.0.0.1:{free_port()}", "k", retry=policy) as client,
        pytest.raises(ServiceUnavailable, match="ConnectError"),
    ):
        client.send(api.me())


def test_pack_directory_is_reproducible_and_keeps_class_folders(tmp_path):
    root = tmp_path / "probes"
    (root / "0").mkdir(parents=True)
    (root / "1").mkdir()
    (root / "0" / "a.png").write_bytes(b"a")
    (root / "1" / "b.png").write_bytes(b"b")
    (root / ".DS_Store").write_bytes(b"junk")
    first = pack_directory(root, tmp_path / "one.tar").read_bytes()
    (root / "0" / "a.png").touch()  # a new mtime changes nothing
    assert pack_directory(root, tmp_path / "two.tar").read_bytes() == first
    with tarfile.open(tmp_path / "one.tar") as bundle:
        assert bundle.getnames() == ["0/a.png", "1/b.png"]
