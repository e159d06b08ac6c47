"""The sandboxed sweep: the same numbers as in-process, nothing of the parent's secrets."""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from shiftaudit.config import AuditConfig
from shiftaudit.engine import sweep_shard
from shiftaudit.sandbox import (
    PASSED_ENVIRONMENT,
    Limits,
    SandboxError,
    Stopped,
    WarmSandbox,
    sweep_in_sandbox,
)

from .hostile_models import endless_model, unbounded_memory_model
from .nets import AliasingNet, export_program, noise_probes

CONFIG = {
    "preprocess": {"input_size": [16, 16], "resize": 16},
    "sweep": {"mode": "circular", "max_shift": 2},
    "runtime": {"batch_size": 25, "device": "cpu"},
    "bootstrap": 50,
}
VOLATILE = {"wall_time_s", "stage_seconds", "started_at"}


def _sweep(model: Path, probes: Path, work: Path, **kwargs):
    work.mkdir()
    options = {"on_tick": lambda progress: None, "should_stop": lambda: False} | kwargs
    return sweep_in_sandbox(
        model=model,
        probes=probes,
        config=CONFIG,
        span=(2, 9),
        work_dir=work,
        limits=Limits(wall_time_s=120, memory_bytes=2 * 2**30),
        **options,
    )


def test_a_sandboxed_shard_equals_the_in_process_one(tmp_path):
    model = export_program(AliasingNet(), tmp_path / "m.pt2")
    probes = noise_probes(tmp_path / "probes", 10, labels=6)
    ticks: list[float] = []
    result = _sweep(model, probes, tmp_path / "work", on_tick=ticks.append, tick_s=0.05)
    local = sweep_shard(model, probes, AuditConfig.model_validate(CONFIG), probes=(2, 9))
    assert result.model_dump(exclude=VOLATILE) == local.model_dump(exclude=VOLATILE)
    assert ticks == sorted(ticks)


def test_the_sweep_sees_none_of_the_parents_secrets(tmp_path, monkeypatch):
    secrets = {
        "DATABASE_URL": "postgresql://user:hunter2@db/prod",
        "SHIFTAUDIT_SECRET_KEY": "s" * 40,
        "AWS_SECRET_ACCESS_KEY": "aws-secret",
    }
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # a worker's GPU assignment is passed on
    seen: dict[str, str] = {}

    def inspect_child() -> bool:
        for child in _children():
            raw = (child / "environ").read_bytes().split(b"\0")
            seen.update(entry.decode().split("=", 1) for entry in raw if b"=" in entry)
        return bool(seen)  # stop once the child's environment has been read

    with pytest.raises(Stopped):
        _sweep(
            endless_model(tmp_path),
            noise_probes(tmp_path / "probes", 10),
            tmp_path / "work",
            should_stop=inspect_child,
        )
    assert seen["HOME"] == seen["TMPDIR"] == str(tmp_path / "work")
    assert seen["CUDA_VISIBLE_DEVICES"] == ""
    assert not set(secrets) & set(seen)
    assert not any(value in "".join(seen.values()) for value in secrets.values())
    assert not list(_children()), "the stopped sweep was killed"


def test_refused_probes_are_an_input_error(tmp_path):
    model = export_program(AliasingNet(), tmp_path / "m.pt2")
    (tmp_path / "probes").mkdir()
    (tmp_path / "probes" / "a.png").write_bytes(b"not a png")
    with pytest.raises(SandboxError, match=r"a\.png") as raised:
        _sweep(model, tmp_path / "probes", tmp_path / "work")
    assert raised.value.input_error


def test_a_crash_in_the_engine_is_one_sentence_and_its_trace_goes_to_the_log(tmp_path, caplog):
    model = export_program(AliasingNet(), tmp_path / "m.pt2")
    work = tmp_path / "work"
    work.mkdir()
    with (
        caplog.at_level(logging.WARNING, logger="shiftaudit.sandbox"),
        pytest.raises(SandboxError) as raised,
    ):
        sweep_in_sandbox(  # a config only the child reads: it dies on a trace
            model=model,
            probes=noise_probes(tmp_path / "probes", 4),
            config={"sweep": {"mode": "spiral"}},
            span=None,
            work_dir=work,
            limits=Limits(wall_time_s=120),
            on_tick=lambda progress: None,
            should_stop=lambda: False,
        )
    assert str(raised.value) == (
        "the audit process failed with exit code 1 (the worker's log has its last lines)"
    )
    assert not raised.value.input_error
    assert not raised.value.transient
    assert "Traceback" in caplog.text
    assert "spiral" in caplog.text


class _RaisesInForward(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > 0:
            raise RuntimeError("the head expects 7 channels")
        return x.mean(dim=(2, 3))


def test_a_models_own_error_is_its_last_line_without_the_trace_or_paths(tmp_path, caplog):
    model = tmp_path / "m.pt"  # TorchScript puts its trace and the author's paths first
    torch.jit.script(_RaisesInForward()).save(str(model))
    with (
        caplog.at_level(logging.INFO, logger="shiftaudit.sandbox"),
        pytest.raises(SandboxError) as raised,
    ):
        _sweep(model, noise_probes(tmp_path / "probes", 10), tmp_path / "work")
    assert raised.value.input_error
    assert str(raised.value).endswith("RuntimeError: the head expects 7 channels")
    assert "Traceback" not in str(raised.value)
    assert __file__ not in str(raised.value)
    assert __file__ in caplog.text, "the whole trace is in the worker's log"


def _children():
    """Live sandboxed sweeps started by this process."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().split(") ", 1)[1].split()
            command = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if int(stat[1]) == os.getpid() and stat[0] != "Z" and b"shiftaudit.sandbox" in command:
            yield entry


# ------------------------------------------------------------------ the fork server


LIMITS = Limits(wall_time_s=120, memory_bytes=2 * 2**30)


def _warm_sweep(warm: WarmSandbox, model: Path, probes: Path, work: Path, **kwargs):
    return _sweep(model, probes, work, warm=warm, **kwargs)


def _cwd(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    try:
        return (Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0]) != "Z"
    except OSError:
        return False


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].split()[1])


def _threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def _threads_after_importing_the_libraries() -> int:
    script = "import os, torch, onnxruntime; print(len(os.listdir('/proc/self/task')))"
    environment = {k: v for k, v in os.environ.items() if k in PASSED_ENVIRONMENT}
    done = subprocess.run([sys.executable, "-c", script], env=environment, capture_output=True)
    return int(done.stdout)


def _children_of(parent: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text().split(") ", 1)[1].split()
            except OSError:
                continue
            if int(stat[1]) == parent and stat[0] != "Z":
                found.append(int(entry.name))
    return found


@pytest.fixture
def warm(tmp_path):
    sandbox = WarmSandbox(tmp_path / "scratch")
    yield sandbox
    sandbox.close()


def test_the_fork_server_is_ready_before_the_job_and_forks_a_fresh_child_per_job(tmp_path, warm):
    model = export_program(AliasingNet(), tmp_path / "m.pt2")
    probes = noise_probes(tmp_path / "probes", 10, labels=6)
    server = warm.prepare(LIMITS)
    assert warm.waiting(ready_within=120) == server
    # Imported before any job exists: torch's library is mapped, and it waits in a
    # directory of its own, not a job's, with no thread a fork could leave half-copied.
    assert "libtorch_cpu" in Path(f"/proc/{server}/maps").read_text()
    assert Path(_cwd(server)).parent == tmp_path / "scratch"
    # No thread of its own (the engine starts none, no torch op ran, so no thread pool):
    # only the idle ones that importing the libraries starts (OpenBLAS, fork-safe through
    # its fork handlers; ONNX Runtime's, waiting on a futex), as in a bare interpreter.
    assert _threads(server) == _threads_after_importing_the_libraries()
    swept_by: list[set[int]] = [set(), set()]

    for run, work in enumerate((tmp_path / "work", tmp_path / "work2")):

        def who_sweeps(run: int = run, work: Path = work) -> bool:
            swept_by[run].update(p for p in _children_of(server) if _cwd(p) == str(work))
            return False

        result = _warm_sweep(warm, model, probes, work, should_stop=who_sweeps, tick_s=0.02)
        local = sweep_shard(model, probes, AuditConfig.model_validate(CONFIG), probes=(2, 9))
        assert result.model_dump(exclude=VOLATILE) == local.model_dump(exclude=VOLATILE)
        assert len(swept_by[run]) == 1, "one child of the fork server ran the job"
        assert not any(_alive(p) for p in swept_by[run]), "a child runs one job, then exits"
    assert swept_by[0] != swept_by[1]
    assert server not in swept_by[0] | swept_by[1]
    # The fork server runs on, untouched by the jobs: no thread started (OpenBLAS even ends
    # its own before a fork), no child left over.
    assert warm.waiting() == server
    assert _threads(server) <= _threads_after_importing_the_libraries()
    assert _children_of(server) == []
    assert len(list((tmp_path / "scratch").iterdir())) == 1


def test_the_fork_server_and_its_children_see_none_of_the_parents_secrets(
    tmp_path, monkeypatch, warm
):
    monkeypatch.setenv("DATABASE_URL", "postgresql://user:hunter2@db/prod")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-secret")
    server = warm.prepare(LIMITS)
    assert warm.waiting(ready_within=120) == server

    def environment(pid: int) -> dict[str, str]:
        raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        return dict(entry.decode().split("=", 1) for entry in raw if b"=" in entry)

    seen = environment(server)
    assert seen["HOME"] == seen["TMPDIR"] == _cwd(server)  # its own empty directory
    assert not {"DATABASE_URL", "AWS_SECRET_ACCESS_KEY"} & set(seen)
    assert "hunter2" not in "".join(seen.values())
    children: list[tuple[int, str, dict[str, str]]] = []

    def inspect() -> bool:
        for pid in _children_of(server):
            if _cwd(pid) == str(tmp_path / "work"):
                children.append((pid, _cwd(pid), environment(pid)))
        return bool(children)

    with pytest.raises(Stopped):
        _warm_sweep(
            warm,
            endless_model(tmp_path),
            noise_probes(tmp_path / "p", 10),
            tmp_path / "work",
            should_stop=inspect,
            tick_s=0.05,
        )
    pid, cwd, child_environment = children[0]
    assert cwd == str(tmp_path / "work")  # moved into the job's directory for it
    assert not {"DATABASE_URL", "AWS_SECRET_ACCESS_KEY"} & set(child_environment)
    assert "hunter2" not in "".join(child_environment.values())
    _wait(lambda: not _alive(pid))  # the stopped sweep was killed
    assert warm.waiting() == server


def test_limits_hold_in_forked_children(tmp_path, warm):
    probes = noise_probes(tmp_path / "probes", 4)
    warm.prepare(LIMITS)
    assert warm.waiting(ready_within=120)
    quick = Limits(wall_time_s=3, memory_bytes=2 * 2**30)
    with pytest.raises(SandboxError, match="wall-time limit of 3 s"):
        sweep_in_sandbox(
            model=endless_model(tmp_path),
            probes=probes,
            config=CONFIG,
            span=None,
            work_dir=_made(tmp_path / "hang"),
            limits=quick,
            warm=warm,
            on_tick=lambda p: None,
            should_stop=lambda: False,
            tick_s=0.2,
        )
    small = Limits(wall_time_s=120, memory_bytes=2**30)
    with pytest.raises(SandboxError, match=r"ran out of memory.*1024 MiB"):
        sweep_in_sandbox(
            model=unbounded_memory_model(tmp_path),
            probes=probes,
            config=CONFIG,
            span=None,
            work_dir=_made(tmp_path / "hog"),
            limits=small,
            warm=warm,
            on_tick=lambda p: None,
            should_stop=lambda: False,
            tick_s=0.2,
        )
    # Other limits, another fork server: RLIMIT_DATA is set before its imports.
    server = warm.waiting()
    assert server is not None
    limit = Path(f"/proc/{server}/limits").read_text()
    assert re.search(rf"Max data size\s+{2**30}\s+{2**30}", limit)
    assert not list(_busy_children())


def test_a_fork_server_killed_while_idle_is_replaced(tmp_path, warm, caplog):
    model = export_program(AliasingNet(), tmp_path / "m.pt2")
    probes = noise_probes(tmp_path / "probes", 10, labels=6)
    doomed = warm.prepare(LIMITS)
    os.kill(doomed, signal.SIGKILL)  # as the out-of-memory killer would
    _wait(lambda: not _alive(doomed))
    result = _warm_sweep(warm, model, probes, tmp_path / "work")
    assert result.probes == (2, 9)
    assert "died while it waited" in caplog.text
    assert warm.waiting() not in (None, doomed)


def test_a_fork_server_killed_during_a_job_takes_the_child_along_and_it_is_retried(tmp_path, warm):
    server = warm.prepare(LIMITS)
    assert warm.waiting(ready_within=120) == server
    seen: list[int] = []

    def kill_the_server() -> bool:
        if not seen and _children_of(server):
            seen.extend(_children_of(server))
            os.kill(server, signal.SIGKILL)
        return False

    with pytest.raises(SandboxError, match="killed from outside") as raised:
        _warm_sweep(
            warm,
            endless_model(tmp_path),
            noise_probes(tmp_path / "p", 10),
            tmp_path / "work",
            should_stop=kill_the_server,
            tick_s=0.05,
        )
    assert raised.value.transient  # run again, as for a lost worker
    _wait(lambda: not any(_alive(p) for p in seen))


_WORKER = """
import sys, time
from pathlib import Path
from shiftaudit.sandbox import Limits, WarmSandbox, sweep_in_sandbox
root, model, probes = map(Path, sys.argv[1:4])
warm = WarmSandbox(root / "scratch")
print(warm.prepare(Limits(wall_time_s=600)), flush=True)
(root / "work").mkdir()
sweep_in_sandbox(model=model, probes=probes, config={config!r}, span=None, work_dir=root / "work",
    limits=Limits(wall_time_s=600), warm=warm, on_tick=lambda p: None,
    should_stop=lambda: False)
"""


def test_the_fork_server_and_its_child_die_with_their_worker(tmp_path):
    script = _WORKER.format(config=CONFIG)
    model, probes = endless_model(tmp_path), noise_probes(tmp_path / "p", 4)
    worker = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path), str(model), str(probes)],
        stdout=subprocess.PIPE,
    )
    assert worker.stdout is not None
    server = int(worker.stdout.readline())
    _wait(lambda: bool(_children_of(server)), timeout=120)
    (child,) = _children_of(server)
    assert _parent(server) == worker.pid
    worker.kill()
    worker.wait()
    _wait(lambda: not _alive(server) and not _alive(child))


def _made(path: Path) -> Path:
    path.mkdir()
    return path


def _wait(predicate, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _busy_children():
    """Sandboxed processes below this one that run a job (not a fork server)."""
    below = [p for entry in _children() for p in _children_of(int(entry.name))]
    direct = [int(entry.name) for entry in _children()]
    return [p for p in direct + below if "/scratch/" not in _cwd(p) + "/"]
