"""The sandboxed sweep: the same numbers as in-process, nothing of the parent's secrets."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shiftaudit.config import AuditConfig
from shiftaudit.engine import sweep_shard
from shiftaudit.sandbox import Limits, SandboxError, Stopped, WarmSandbox, sweep_in_sandbox

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


# ------------------------------------------------------------------ warm children


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


@pytest.fixture
def warm(tmp_path):
    sandbox = WarmSandbox(tmp_path / "scratch")
    yield sandbox
    sandbox.close()


def test_a_warm_child_is_ready_before_its_job_and_runs_only_that_one(tmp_path, warm):
    model = export_program(AliasingNet(), tmp_path / "m.pt2")
    probes = noise_probes(tmp_path / "probes", 10, labels=6)
    first = warm.prepare(LIMITS)
    assert warm.waiting(ready_within=120) == first
    # Imported before any job exists: torch's library is mapped, and it waits in a
    # directory of its own, not a job's.
    assert "libtorch_cpu" in Path(f"/proc/{first}/maps").read_text()
    assert Path(_cwd(first)).parent == tmp_path / "scratch"
    swept_by: set[int] = set()

    def who_sweeps() -> bool:
        swept_by.update(p for p in _sandbox_pids() if _cwd(p) == str(tmp_path / "work"))
        return False

    result = _warm_sweep(warm, model, probes, tmp_path / "work", should_stop=who_sweeps)
    local = sweep_shard(model, probes, AuditConfig.model_validate(CONFIG), probes=(2, 9))
    assert result.model_dump(exclude=VOLATILE) == local.model_dump(exclude=VOLATILE)
    assert swept_by <= {first}
    assert not _alive(first), "a child runs one job, then exits"
    second = warm.waiting()
    assert second is not None  # the next job's, already started
    assert second != first
    _warm_sweep(warm, model, probes, tmp_path / "work2")
    assert not _alive(second)
    assert warm.waiting() not in (None, first, second)
    # Its idle directory went with it; only the waiting child's is left.
    assert len(list((tmp_path / "scratch").iterdir())) == 1


def test_a_warm_child_sees_none_of_the_parents_secrets(tmp_path, monkeypatch, warm):
    monkeypatch.setenv("DATABASE_URL", "postgresql://user:hunter2@db/prod")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-secret")
    pid = warm.prepare(LIMITS)
    assert warm.waiting(ready_within=120) == pid
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    seen = dict(entry.decode().split("=", 1) for entry in raw if b"=" in entry)
    assert seen["HOME"] == seen["TMPDIR"] == _cwd(pid)  # its own empty directory
    assert not {"DATABASE_URL", "AWS_SECRET_ACCESS_KEY"} & set(seen)
    assert "hunter2" not in "".join(seen.values())
    cwd: list[str] = []

    def inspect() -> bool:
        cwd.append(_cwd(pid))
        return True

    with pytest.raises(Stopped):
        _warm_sweep(
            warm,
            endless_model(tmp_path),
            noise_probes(tmp_path / "p", 4),
            tmp_path / "work",
            should_stop=inspect,
        )
    assert cwd == [str(tmp_path / "work")]  # moved into the job's directory for it
    assert not _alive(pid), "the stopped sweep was killed"


def test_limits_hold_in_warm_children(tmp_path, warm):
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
    assert not list(_busy_children())


def test_a_warm_child_killed_while_idle_is_replaced(tmp_path, warm, caplog):
    model = export_program(AliasingNet(), tmp_path / "m.pt2")
    probes = noise_probes(tmp_path / "probes", 10, labels=6)
    doomed = warm.prepare(LIMITS)
    os.kill(doomed, signal.SIGKILL)  # as the out-of-memory killer would
    _wait(lambda: not _alive(doomed))
    result = _warm_sweep(warm, model, probes, tmp_path / "work")
    assert result.probes == (2, 9)
    assert "died while it waited" in caplog.text
    assert warm.waiting() not in (None, doomed)


def test_a_warm_child_dies_with_its_worker(tmp_path):
    script = (
        "import sys, time; from pathlib import Path; from shiftaudit.sandbox import "
        "Limits, WarmSandbox; w = WarmSandbox(Path(sys.argv[1])); "
        "print(w.prepare(Limits(wall_time_s=60)), flush=True); time.sleep(600)"
    )
    worker = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE)
    assert worker.stdout is not None
    pid = int(worker.stdout.readline())
    assert _alive(pid)
    worker.kill()
    worker.wait()
    _wait(lambda: not _alive(pid))


def _made(path: Path) -> Path:
    path.mkdir()
    return path


def _wait(predicate, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _sandbox_pids() -> list[int]:
    return [int(entry.name) for entry in _children()]


def _busy_children():
    """Sandboxed children of this process that run a job (not one waiting for a job)."""
    return [p for p in _sandbox_pids() if "/scratch/" not in _cwd(p) + "/"]
