"""Faults, each ending with every audit finished exactly once and nothing lost.

Real worker and reconciler processes, a real (private) redis-server, the machines'
PostgreSQL; the faults are real too: SIGKILL, a Redis restart, a cut database connection,
models that segfault, allocate without limit or never return.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

from tests.hostile_models import endless_model, segfaulting_model, unbounded_memory_model
from tests.nets import GlobalPoolNet, export_program, noise_probes

from .conftest import CONFIG, zip_probes
from .proxy import CuttableProxy

# About 15 s of sweeping on two CPU cores: long enough to interrupt.
SLOW_CONFIG = {
    **CONFIG,
    "sweep": {"mode": "circular", "max_shift": 8},
    "layers": {"enabled": False},
}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {
        "good": export_program(GlobalPoolNet(seed=1), root / "good.pt2"),
        "slow": export_program(GlobalPoolNet(width=128), root / "slow.pt2"),
        "segfault": segfaulting_model(root),
        "memory": unbounded_memory_model(root),
        "endless": endless_model(root),
    }


@pytest.fixture(scope="module")
def probes(tmp_path_factory):
    return zip_probes(noise_probes(tmp_path_factory.mktemp("probes") / "noise", 24, labels=5))


@pytest.fixture(scope="module")
def many_probes(tmp_path_factory):
    return zip_probes(noise_probes(tmp_path_factory.mktemp("probes") / "many", 48, labels=5))


def _sandboxes() -> set[int]:
    """Pids of live sandboxed sweeps of this checkout on this machine (not the fork servers
    that workers keep, which wait in a `warm-` directory of their own). Other checkouts'
    tests may run sandboxes on the same machine: theirs run another interpreter. Not only
    this process's descendants: a sweep that outlived its worker is no one's."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                command = (entry / "cmdline").read_bytes().split(b"\0")
                state = (entry / "stat").read_text().split(") ", 1)[1][0]
            except OSError:
                continue
            ours = command[0] == os.fsencode(sys.executable)
            if ours and b"shiftaudit.sandbox" in command and state != "Z" and not _idle(entry):
                found.add(int(entry.name))
    return found


def _idle(process: Path) -> bool:
    try:
        return Path(os.readlink(process / "cwd")).name.startswith("warm-")
    except OSError:
        return False


def _wait_until(predicate, timeout: float, what: str) -> float:
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)
    return time.monotonic() - started


def _running_with_progress(deployment, audit_id: str, at_least: float) -> None:
    _wait_until(
        lambda: deployment.audit(audit_id)["progress"] >= at_least, 60, f"progress {at_least}"
    )


def test_models_that_crash_hog_memory_or_hang_fail_alone_and_the_worker_goes_on(
    deploy, models, probes
):
    deployment = deploy()
    deployment.start_worker(
        "w1", SHIFTAUDIT_AUDIT_TIME_LIMIT_S="25", SHIFTAUDIT_AUDIT_MEMORY_LIMIT_MB="2048"
    )
    worker_pid = deployment.processes["w1"].pid
    ids = {}
    for name in ("segfault", "memory", "endless", "good"):
        ids[name] = deployment.submit(*deployment.upload(models[name], probes))
    outcomes = {name: deployment.wait(audit_id, timeout=180) for name, audit_id in ids.items()}
    assert outcomes["segfault"]["status"] == "failed"
    assert "crashed the audit process (SIGSEGV)" in outcomes["segfault"]["error"]
    assert outcomes["memory"]["status"] == "failed"
    assert "ran out of memory" in outcomes["memory"]["error"]
    assert "2048 MiB" in outcomes["memory"]["error"]
    assert outcomes["endless"]["status"] == "failed"
    assert "wall-time limit of 25 s" in outcomes["endless"]["error"]
    assert outcomes["good"]["status"] == "succeeded"
    # The same worker process ran all four; model errors are never retried.
    assert deployment.processes["w1"].poll() is None
    assert deployment.processes["w1"].pid == worker_pid
    for audit_id in ids.values():
        (shard,) = deployment.shards(audit_id)
        assert shard.attempts == 1
    assert [deployment.report_count(ids[n]) for n in ids] == [0, 0, 0, 1]
    assert not _sandboxes()


def test_a_running_audit_is_cancelled_within_seconds(deploy, models, probes):
    deployment = deploy()
    deployment.start_worker("w1")
    model_id, probe_set_id = deployment.upload(models["endless"], probes)
    audit_id = deployment.submit(model_id, probe_set_id)
    deployment.wait(audit_id, "running")
    _wait_until(lambda: bool(_sandboxes()), 30, "the sweep to start")
    response = deployment.client.post(f"/v1/audits/{audit_id}/cancel", headers=deployment.headers)
    assert response.status_code == 200
    stopped_in = _wait_until(lambda: not _sandboxes(), 10, "the sweep to be killed")
    assert stopped_in < 5
    _wait_until(
        lambda: deployment.shards(audit_id)[0].status.value == "cancelled", 10, "shard cancelled"
    )
    assert deployment.audit(audit_id)["status"] == "cancelled"
    good = deployment.submit(*deployment.upload(models["good"], probes))
    assert deployment.wait(good)["status"] == "succeeded"


def test_a_worker_killed_mid_audit_is_replaced_and_the_audit_finishes_once(
    deploy, models, many_probes
):
    deployment = deploy()
    deployment.start_reconciler()
    deployment.start_worker("doomed")
    audit_id = deployment.submit(*deployment.upload(models["slow"], many_probes), SLOW_CONFIG)
    _running_with_progress(deployment, audit_id, 0.05)
    orphans = _sandboxes()
    assert orphans
    deployment.kill("doomed", signal.SIGKILL)
    # The sweep dies with its worker (PR_SET_PDEATHSIG), it is not left computing.
    _wait_until(lambda: not (_sandboxes() & orphans), 10, "the orphaned sweep to die")
    deployment.start_worker("heir")
    audit = deployment.wait(audit_id, timeout=180)
    assert audit["status"] == "succeeded", audit
    (shard,) = deployment.shards(audit_id)
    assert shard.attempts == 2
    assert shard.worker is not None
    assert shard.worker.startswith("heir@")
    assert deployment.report_count(audit_id) == 1
    assert "requeued" in deployment.log("reconciler")


def test_audits_queued_when_redis_restarts_are_sent_again_and_finish_once(
    deploy, models, probes, many_probes
):
    deployment = deploy()
    deployment.start_worker("w1")
    busy = deployment.submit(*deployment.upload(models["slow"], many_probes), SLOW_CONFIG)
    _running_with_progress(deployment, busy, 0.05)
    model_id, probe_set_id = deployment.upload(models["good"], probes)
    queued = [deployment.submit(model_id, probe_set_id) for _ in range(3)]
    assert deployment.app.state.queue.waiting() == {f"{q}/0" for q in queued}
    deployment.broker.restart()
    assert deployment.app.state.queue.waiting() == set()  # every message is gone
    deployment.start_reconciler()
    for audit_id in [busy, *queued]:
        assert deployment.wait(audit_id, timeout=180)["status"] == "succeeded"
        assert deployment.report_count(audit_id) == 1
        (shard,) = deployment.shards(audit_id)
        assert shard.attempts == 1
    assert "resent" in deployment.log("reconciler")
    assert deployment.processes["w1"].poll() is None  # the worker rode out the restart


def test_a_database_outage_while_a_worker_reports_progress_loses_nothing(
    deploy, database, models, many_probes
):
    deployment = deploy()
    host_port = database.split("@", 1)[1].split("/", 1)[0]
    host, port = host_port.split(":")
    proxy = CuttableProxy(host, int(port))
    through_proxy = database.replace(host_port, f"127.0.0.1:{proxy.port}")
    try:
        deployment.start_worker("w1", SHIFTAUDIT_DATABASE_URL=through_proxy)
        audit_id = deployment.submit(*deployment.upload(models["slow"], many_probes), SLOW_CONFIG)
        # Cut early: the progress shown lags the sweep by up to a beat, and on an idle machine
        # a cut at 0.3 could come after the sweep's last beat, so no beat met the outage.
        _running_with_progress(deployment, audit_id, 0.05)
        proxy.cut()
        frozen = deployment.audit(audit_id)["progress"]
        # Down until the sweep has ended and the worker is retrying to store the result.
        deployment.wait_for_log("w1", "retrying in", timeout=120)
        assert deployment.audit(audit_id)["progress"] < 1.0
        assert deployment.audit(audit_id)["progress"] <= frozen + 0.02
        proxy.restore()
        audit = deployment.wait(audit_id, timeout=120)
    finally:
        proxy.close()
    assert audit["status"] == "succeeded", audit
    assert "heartbeat skipped" in deployment.log("w1")
    (shard,) = deployment.shards(audit_id)
    assert shard.attempts == 1
    assert deployment.report_count(audit_id) == 1
