"""API -> Redis -> worker process -> PostgreSQL -> API, on real services."""

from __future__ import annotations

import os
import re
import signal
import time
import uuid
from pathlib import Path

import pytest
import redis

from service.routing import CPU_QUEUE
from shiftaudit.config import AuditConfig
from shiftaudit.engine import run_audit
from tests.nets import AliasingNet, export_program, noise_probes

from .conftest import CELERY, CONFIG, zip_probes

VOLATILE = {"wall_time_s", "stage_seconds", "started_at", "shards"}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs")
    model = export_program(AliasingNet(seed=4), root / "model.pt2")
    return model, zip_probes(noise_probes(root / "probes", 24, labels=6))


def _strip(report):
    return {
        **report,
        "provenance": {k: v for k, v in report["provenance"].items() if k not in VOLATILE},
    }


def test_an_audit_runs_on_a_worker_and_its_report_is_served(deploy, inputs):
    deployment = deploy()
    deployment.start_worker("w1")
    audit_id = deployment.submit(*deployment.upload(*inputs))
    audit = deployment.wait(audit_id)
    assert audit["status"] == "succeeded", audit
    assert audit["progress"] == 1.0
    report = deployment.report(audit_id)
    local = run_audit(*inputs, AuditConfig.model_validate(CONFIG)).model_dump(mode="json")
    assert _strip(report) == _strip(local)
    (shard,) = deployment.shards(audit_id)
    assert (shard.status.value, shard.attempts, shard.worker) == ("succeeded", 1, shard.worker)
    assert shard.worker is not None
    assert shard.worker.startswith("w1@test")


def _fork_server(worker: int, timeout: float = 60) -> int:
    """The worker's fork server, once it has imported the engine (torch's library mapped);
    it waits in a `warm-` directory of its own."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for entry in Path("/proc").iterdir():
            try:
                stat = (entry / "stat").read_text().split(") ", 1)[1].split()
                if int(stat[1]) != worker:
                    continue
                waiting = Path(os.readlink(entry / "cwd")).name.startswith("warm-")
                if waiting and "libtorch_cpu" in (entry / "maps").read_text():
                    return int(entry.name)
            except (OSError, ValueError):
                continue
        time.sleep(0.1)
    raise AssertionError("the worker has no fork server")


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


FORKED = re.compile(r"sandbox (\d+) forked by the fork server (\d+)")


def test_each_audit_runs_in_a_fresh_child_of_a_fork_server_started_before_it(deploy, inputs):
    deployment = deploy()
    deployment.start_worker("w1")
    worker = deployment.processes["w1"].pid
    # Started, and the engine imported, before any audit exists.
    server = _fork_server(worker)
    model_id, probe_set_id = deployment.upload(*inputs)
    for _ in range(2):
        audit_id = deployment.submit(model_id, probe_set_id)
        assert deployment.wait(audit_id)["status"] == "succeeded"
    forked = [(int(child), int(parent)) for child, parent in FORKED.findall(deployment.log("w1"))]
    children = [child for child, _ in forked]
    assert [parent for _, parent in forked] == [server, server]
    assert len(set(children)) == 2, "a fresh child per audit"
    assert server not in children
    assert not any(_alive(child) for child in children), "a child runs one audit, then exits"
    assert _fork_server(worker) == server  # the same one serves the next audit
    # The fork server dies with its worker, as its children do (through it).
    deployment.kill("w1", signal.SIGKILL)
    deadline = time.monotonic() + 10
    while _alive(server):
        assert time.monotonic() < deadline, "the fork server outlived its worker"
        time.sleep(0.05)


def test_a_sharded_audit_runs_on_two_workers_at_once_and_equals_the_unsharded_one(deploy, inputs):
    deployment = deploy()
    # Two workers on one machine share its cores: one thread each.
    deployment.start_worker("w1", "cpu", "--threads=1")
    deployment.start_worker("w2", "cpu", "--threads=1")
    model_id, probe_set_id = deployment.upload(*inputs)
    whole_id = deployment.submit(model_id, probe_set_id)
    assert deployment.wait(whole_id)["status"] == "succeeded"
    deployment.settings.shard_probes = 8  # 24 probes: three shards
    sharded_id = deployment.submit(model_id, probe_set_id)
    assert deployment.wait(sharded_id)["status"] == "succeeded"
    shards = deployment.shards(sharded_id)
    assert [(s.probe_start, s.probe_stop) for s in shards] == [(0, 8), (8, 16), (16, 24)]
    assert {s.worker.split("@")[0] for s in shards if s.worker} == {"w1", "w2"}
    overlapping = [
        (a.shard, b.shard)
        for a in shards
        for b in shards
        if a.worker != b.worker and a.started_at < b.finished_at and b.started_at < a.finished_at
    ]
    assert overlapping, "the two workers never swept at the same time"
    sharded, whole = deployment.report(sharded_id), deployment.report(whole_id)
    assert _strip(sharded) == _strip(whole)
    assert (sharded["provenance"]["shards"], whole["provenance"]["shards"]) == (3, 1)


def test_an_audit_is_routed_by_device_and_a_cpu_worker_never_takes_a_gpu_audit(deploy, inputs):
    deployment = deploy()
    deployment.start_worker("cpu1", device="cpu")
    model_id, probe_set_id = deployment.upload(*inputs)
    gpu_id = deployment.submit(
        model_id, probe_set_id, {**CONFIG, "runtime": {"batch_size": 25, "device": "cuda"}}
    )
    auto_id = deployment.submit(
        model_id, probe_set_id, {**CONFIG, "runtime": {"batch_size": 25, "device": "auto"}}
    )
    assert deployment.wait(auto_id)["status"] == "succeeded"  # auto may run on a CPU
    time.sleep(2)
    assert deployment.audit(gpu_id)["status"] == "queued"
    assert deployment.app.state.queue.waiting() == {f"{gpu_id}/0"}


def test_an_audit_for_a_gpu_type_runs_only_on_a_worker_of_that_type(deploy, inputs):
    deployment = deploy(gpu_types=["a100", "h100"])
    # This machine has no GPU: `auto` audits run on the CPU of whichever worker takes them.
    deployment.start_worker("h100", "gpu", "--gpu-type=h100")
    model_id, probe_set_id = deployment.upload(*inputs)
    created = deployment.client.post(
        "/v1/audits",
        headers=deployment.headers,
        json={
            "model_id": model_id,
            "probe_set_id": probe_set_id,
            "config": CONFIG | {"runtime": {"batch_size": 25, "device": "auto"}},
            "gpu_type": "a100",
        },
    )
    assert created.status_code == 202, created.text
    audit_id = created.json()["id"]
    untyped = deployment.submit(model_id, probe_set_id)  # device cpu: not for a GPU worker
    time.sleep(3)
    assert deployment.audit(audit_id)["status"] == "queued"
    assert deployment.app.state.queue.waiting() == {f"{audit_id}/0", f"{untyped}/0"}
    deployment.start_worker("a100", "gpu", "--gpu-type=a100")
    assert deployment.wait(audit_id)["status"] == "succeeded"
    (shard,) = deployment.shards(audit_id)
    assert shard.worker is not None
    assert shard.worker.startswith("a100@test")
    assert deployment.audit(untyped)["status"] == "queued"


def test_a_job_delivered_twice_runs_once_on_a_plain_celery_worker(deploy, inputs):
    deployment = deploy()
    audit_id = deployment.submit(*deployment.upload(*inputs))
    # The same message again, as a broker redelivery or a second reconciler would send it.
    deployment.app.state.queue.enqueue(uuid.UUID(audit_id), 0, route=CPU_QUEUE)
    with redis.Redis.from_url(deployment.broker.url) as client:
        assert client.llen(CPU_QUEUE) == 2
    deployment.start(
        "celery",
        [
            str(CELERY),
            "-A",
            "workers.app",
            "worker",
            "--pool=solo",
            "-Q",
            CPU_QUEUE,
            "-l",
            "INFO",
        ],
        ready="ready.",
    )
    assert deployment.wait(audit_id)["status"] == "succeeded"
    deployment.wait_for_log("celery", "succeeded in", timeout=30)
    _wait_for_count(lambda: deployment.log("celery").count("succeeded in"), 2)
    (shard,) = deployment.shards(audit_id)
    assert shard.attempts == 1
    assert deployment.report_count(audit_id) == 1
    # The duplicate found its shard finished and says so.
    assert "'succeeded'" in deployment.log("celery").split("succeeded in")[-1]


def _wait_for_count(count, wanted: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while count() < wanted:
        assert time.monotonic() < deadline, f"saw {count()} of {wanted}"
        time.sleep(0.1)
