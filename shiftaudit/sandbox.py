"""Sweep a shard in a child process that an untrusted model cannot take its parent down with.

The child starts from a fresh interpreter (never a fork: no inherited CUDA context, database
connection or secret) with an allow-listed environment, runs in its own temporary directory
and session, and dies with its parent. The limits: data size (set in the child before torch
is imported), resident memory and wall time; a crash, a hang or a
runaway allocation becomes a `SandboxError` that names what happened, and a kill from outside
(SIGKILL or SIGTERM from an operator or the out-of-memory killer) a transient one, which the
caller runs again.

Starting that interpreter and importing torch and the engine takes seconds, longer than a
small audit's sweep, so a worker keeps one child started ahead of its next job (`WarmSandbox`):
interpreter up, engine imported, limits applied, waiting on stdin. The job's path arrives as one
line on stdin; the child moves into the job's directory, runs that one job and exits, and the
next job gets the next fresh child. A child never runs two jobs, so nothing a model leaves in
its process (globals, caches, threads) reaches another tenant's audit.

Run as `python -m shiftaudit.sandbox --parent PID [--data-limit BYTES]`, the job file's path on
stdin: "ready" goes to stdout once the imports are done, then progress, one fraction per line;
the result to `result.json` and a refused input to `error.json`, beside the job file.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .report import ShardResult

log = logging.getLogger(__name__)

# Variables a sweep may see; everything else (database and broker URLs, keys, cloud
# credentials) stays in the parent.
PASSED_ENVIRONMENT = (
    "PATH",
    "LANG",
    "LC_ALL",
    "CUDA_VISIBLE_DEVICES",
    "CUDA_DEVICE_ORDER",
    "NVIDIA_VISIBLE_DEVICES",
    "LD_LIBRARY_PATH",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
)
_INPUT_ERROR_EXIT = 3
_MEMORY_EXIT = 4


@dataclass(frozen=True)
class Limits:
    """What one sweep may use.

    Memory is held twice: the kernel refuses allocations past RLIMIT_DATA (heap and private
    writable mappings; unlike RLIMIT_AS it does not count reserved address space, which
    torch's threads and shared libraries have plenty of), and the parent kills a child whose
    resident memory passes the limit. On GPU workers only the second applies: the CUDA
    driver's private mappings would count against RLIMIT_DATA.
    """

    wall_time_s: float
    memory_bytes: int | None = None
    limit_data: bool = True
    # CPU threads of a sweep whose config sets none: several workers on one machine must
    # share its cores, or their thread pools thrash.
    threads: int | None = None


class SandboxError(Exception):
    """The sweep failed; `input_error` when the model or probes were refused (never retried),
    `transient` when something outside killed it (run it again, as for a lost worker)."""

    def __init__(self, message: str, *, input_error: bool = False, transient: bool = False) -> None:
        super().__init__(message)
        self.input_error = input_error
        self.transient = transient


# Signals a process raises on itself by faulting: the model's own doing (a bad memory access,
# arithmetic fault, abort, illegal instruction, bad system call, a trap, a resource limit).
# Any other signal that ends the sweep was sent from outside: the sandbox never signals it
# except when it stops a sweep on purpose (wall time, memory, cancellation), and then says so
# before it looks at the exit status.
MODEL_FAULTS = frozenset(
    {
        signal.SIGSEGV,
        signal.SIGBUS,
        signal.SIGFPE,
        signal.SIGILL,
        signal.SIGABRT,
        signal.SIGSYS,
        signal.SIGTRAP,
        signal.SIGXCPU,
        signal.SIGXFSZ,
    }
)


def sweep_in_sandbox(
    *,
    model: Path,
    probes: Path,
    config: dict[str, Any],
    span: tuple[int, int] | None,
    work_dir: Path,
    limits: Limits,
    on_tick: Callable[[float], None],
    should_stop: Callable[[], bool],
    tuning_cache: Path | None = None,
    tick_s: float = 1.0,
    warm: WarmSandbox | None = None,
) -> ShardResult:
    """Sweep in a child process; `on_tick(progress)` and `should_stop()` run every tick_s.

    With `warm`, the sweep runs in its child started ahead of time (or a new one, if that
    died or was started with other limits), and the next one is started at once for the
    next job. Raises SandboxError for anything the child did wrong and `Stopped` when
    should_stop() turned true (the child is killed within one tick).
    """
    called = time.monotonic()
    job = work_dir / "job.json"
    job.write_text(
        json.dumps(
            {
                "model": str(model),
                "probes": str(probes),
                "config": config,
                "span": span,
                "tuning_cache": None if tuning_cache is None else str(tuning_cache),
                "threads": limits.threads,
                # Set by the child when the job arrives: a warm child was started before
                # this directory existed. From the job, never from os.environ (scrubbed).
                "environment": {"HOME": str(work_dir), "TMPDIR": str(work_dir)},
            }
        )
    )
    child = warm.take(limits) if warm is not None else None
    if child is not None and not child.hand(job):
        child.discard("it died before its job was handed over")
        child = None
    if child is None:  # no warm child: a cold one, started in the job's own directory
        child = _Child.start(work_dir, limits, owns_home=False)
        child.hand(job)  # if it died already, its exit status says why, below
    started = time.monotonic()
    try:
        if warm is not None:
            # Now rather than after this sweep: its imports overlap the sweep instead of
            # delaying the next job.
            warm.prepare_quietly(limits)
        while child.process.poll() is None:
            if should_stop():
                raise Stopped
            if time.monotonic() - started > limits.wall_time_s:
                raise SandboxError(
                    f"the audit exceeded its wall-time limit of {limits.wall_time_s:g} s "
                    "(a model that never returns?)"
                )
            if (
                limits.memory_bytes is not None
                and _resident_bytes(child.process.pid) > limits.memory_bytes
            ):
                raise SandboxError(_memory_message(limits))
            on_tick(child.progress.latest)
            _wait(child.process, tick_s)
        first = child.progress.first_at
        if first is not None:  # how long a job waits for its model to run (docs/workers.md)
            log.info(
                "sandbox %d: first forward %.3f s after the job reached the sandbox",
                child.process.pid,
                first - called,
            )
        return _outcome(child.process.returncode, work_dir, child.stderr_path, limits)
    finally:
        child.close()


class _Child:
    """One sandbox process, from its start (maybe long before its job) to its end."""

    def __init__(
        self, process: subprocess.Popen[bytes], home: Path, limits: Limits, owns_home: bool
    ) -> None:
        self.process, self.home, self.owns_home = process, home, owns_home
        self.key = _start_key(limits)
        self.progress = _ProgressReader(process)
        self.stderr_path = home / "stderr.txt"

    @classmethod
    def start(cls, home: Path, limits: Limits, *, owns_home: bool) -> _Child:
        """Start a child in `home` (its working, home and temporary directory until a job
        moves it). It dies with the thread that calls this (PR_SET_PDEATHSIG): call it from
        the thread that lives as long as the worker's jobs, its main one."""
        data_limit = limits.memory_bytes if limits.limit_data else None
        command = [sys.executable, "-m", "shiftaudit.sandbox", "--parent", str(os.getpid())]
        if data_limit is not None:
            command += ["--data-limit", str(data_limit)]
        with (home / "stderr.txt").open("wb") as stderr:
            process = subprocess.Popen(
                command,
                cwd=home,
                env=scrubbed_environment(home),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                start_new_session=True,  # its own process group: killed as a whole
            )
        return cls(process, home, limits, owns_home)

    def hand(self, job: Path) -> bool:
        """Give the child its one job (and close stdin: there is no second); False if it
        had died already."""
        assert self.process.stdin is not None
        try:
            if self.process.poll() is not None:
                return False
            self.process.stdin.write(f"{job}\n".encode())
            self.process.stdin.close()
        except BrokenPipeError:
            return False
        return True

    def discard(self, why: str) -> None:
        """An idle child that will run no job: say why if it died on its own, end it."""
        code = self.process.poll()
        if code is not None:
            log.warning(
                "the idle sandbox process %s %s (exit status %s); starting another",
                self.process.pid,
                why,
                code,
            )
        self.close()

    def close(self) -> None:
        """Kill what is left of it (its whole group), reap it, remove its own directory."""
        if self.process.poll() is None:
            _kill(self.process)
        with contextlib.suppress(OSError):
            if self.process.stdin is not None:
                self.process.stdin.close()
        self.progress.join()
        if self.owns_home:
            shutil.rmtree(self.home, ignore_errors=True)


def _start_key(limits: Limits) -> tuple[object, ...]:
    """What a child is started with: a warm child serves only a job that would have started
    the same one (data limit, environment, interpreter)."""
    environment = scrubbed_environment(Path("."))
    return (
        limits.memory_bytes if limits.limit_data else None,
        sys.executable,
        tuple(sorted((k, v) for k, v in environment.items() if k not in ("HOME", "TMPDIR"))),
    )


class WarmSandbox:
    """One sandbox child kept started ahead of the next job, per worker process.

    Each child runs one job; `take` hands out the waiting one and `prepare` starts the next.
    A child that died while it waited (the out-of-memory killer, an operator) is replaced
    without the job noticing. Idle children live in `root/<prefix>...` directories (so that
    a worker's start-up clean-up can tell a dead worker's from a live one's). Call `take` and
    `prepare` from the worker's job thread: a child dies with the thread that started it.
    """

    def __init__(self, root: Path, prefix: str = "warm-") -> None:
        self.root, self.prefix = root, prefix
        self._idle: _Child | None = None
        self._lock = threading.Lock()
        atexit.register(self.close)

    def prepare(self, limits: Limits) -> int:
        """Start a child for the next job unless one is waiting; its pid."""
        with self._lock:
            idle = self._idle
            if idle is not None and (
                idle.process.poll() is not None or idle.key != _start_key(limits)
            ):
                idle.discard("died while it waited for a job")
                idle = self._idle = None
            if idle is None:
                self.root.mkdir(parents=True, exist_ok=True)
                home = Path(tempfile.mkdtemp(prefix=self.prefix, dir=self.root))
                idle = self._idle = _Child.start(home, limits, owns_home=True)
            return idle.process.pid

    def prepare_quietly(self, limits: Limits) -> None:
        """`prepare`, where failing to start one must not fail the job at hand (the next
        job starts its own child if none is waiting)."""
        try:
            self.prepare(limits)
        except OSError as error:
            log.warning("could not start a sandbox process ahead of the next job: %s", error)

    def take(self, limits: Limits) -> _Child | None:
        """The waiting child, if it is alive and was started for jobs like this one."""
        with self._lock:
            idle, self._idle = self._idle, None
        if idle is None:
            return None
        if idle.process.poll() is not None:
            idle.discard("died while it waited for a job")
            return None
        if idle.key != _start_key(limits):
            idle.close()  # started for other limits (settings changed): not this job's
            return None
        return idle

    def waiting(self, *, ready_within: float = 0.0) -> int | None:
        """The pid of the child waiting for a job, if any; with `ready_within`, only once it
        has imported the engine (waiting up to that many seconds)."""
        with self._lock:
            idle = self._idle
        if idle is None or idle.process.poll() is not None:
            return None
        if ready_within and not idle.progress.ready.wait(ready_within):
            return None
        return idle.process.pid

    def close(self) -> None:
        """End the waiting child (at shutdown)."""
        with self._lock:
            idle, self._idle = self._idle, None
        if idle is not None:
            idle.close()


class Stopped(Exception):
    """should_stop() turned true and the child was killed."""


def scrubbed_environment(work_dir: Path) -> dict[str, str]:
    """The allow-listed variables, with home and temporary files in the work directory."""
    environment = {k: v for k, v in os.environ.items() if k in PASSED_ENVIRONMENT}
    environment |= {"HOME": str(work_dir), "TMPDIR": str(work_dir), "PYTHONNOUSERSITE": "1"}
    return environment


def _outcome(code: int, work_dir: Path, stderr_path: Path, limits: Limits) -> ShardResult:
    if code == 0:
        return ShardResult.model_validate_json((work_dir / "result.json").read_bytes())
    if code == _INPUT_ERROR_EXIT:
        message = json.loads((work_dir / "error.json").read_text())["message"]
        raise SandboxError(message, input_error=True)
    if code == _MEMORY_EXIT:
        raise SandboxError(_memory_message(limits))
    tail = _tail(stderr_path)
    if code < 0:
        name = _signal_name(-code)
        if -code not in MODEL_FAULTS:
            raise SandboxError(
                f"the audit process was killed from outside ({name}), by an operator or the "
                "out-of-memory killer, not by the model",
                transient=True,
            )
        raise SandboxError(f"the model crashed the audit process ({name}){tail}")
    raise SandboxError(f"the audit process failed with exit code {code}{tail}")


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:  # a real-time signal has no name of its own
        return f"signal {number}"


def _memory_message(limits: Limits) -> str:
    limit = "" if limits.memory_bytes is None else f" of {limits.memory_bytes / 2**20:.0f} MiB"
    return f"the model ran out of memory: the audit's memory limit{limit} was exceeded"


def _tail(path: Path, lines: int = 5) -> str:
    text = path.read_text(errors="replace").strip().splitlines()[-lines:]
    return (": " + " | ".join(text)) if text else ""


def _wait(child: subprocess.Popen[bytes], seconds: float) -> None:
    with contextlib.suppress(subprocess.TimeoutExpired):
        child.wait(timeout=seconds)


def _kill(child: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(child.pid, signal.SIGKILL)
    child.wait()


def _resident_bytes(pid: int) -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
    return int(match.group(1)) * 1024 if match else 0


class _ProgressReader:
    """Keeps the child's latest progress line; reading in a thread never blocks the ticks."""

    def __init__(self, child: subprocess.Popen[bytes]) -> None:
        self.latest = 0.0
        self.ready = threading.Event()  # the child has imported the engine
        self.first_at: float | None = None  # when the first progress came: a forward ran
        assert child.stdout is not None
        self._stream = child.stdout
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        for line in self._stream:
            if line == b"ready\n" and not self.ready.is_set():
                self.ready.set()
                continue
            try:
                self.latest = min(1.0, max(0.0, float(line)))
                if self.first_at is None:
                    self.first_at = time.monotonic()
            except ValueError:
                continue  # the model printed something: not ours to parse

    def join(self) -> None:
        self._thread.join(timeout=5)
        self._stream.close()


# ------------------------------------------------------------------------------ child side


def _die_with_parent(parent: int) -> None:
    """Ask the kernel to SIGKILL this process when its parent dies (Linux)."""
    if sys.platform == "linux":
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


# Imported by a warm child while it waits: the loader of `torch.export` programs imports
# them on first use (dynamo, the serialiser), 1.5 s of a small audit's latency here. Not the
# ONNX exporter that tuning may try: it is needed once per model (the choice is cached), and
# importing it in every child would cost every audit its CPU time.
_PRELOADED = (
    "torch.export.pt2_archive._package",
    "torch._export.serde.serialize",
    "torch.export._trace",
)


def _child(parent: int, data_limit: int | None) -> int:
    _die_with_parent(parent)
    if data_limit is not None:
        import resource

        resource.setrlimit(resource.RLIMIT_DATA, (data_limit, data_limit))
    # Imported only now, under the limit.
    import importlib

    from .config import AuditConfig
    from .engine import sweep_shard
    from .errors import ShiftAuditError
    from .runtimes import is_out_of_memory

    if not select.select([sys.stdin], [], [], 0)[0]:  # waiting: no job has arrived yet
        for name in _PRELOADED:
            with contextlib.suppress(ImportError):
                importlib.import_module(name)
    print("ready", flush=True)
    line = sys.stdin.readline().strip()
    if not line:  # stdin closed without a job: the worker is shutting down, or gone
        return 0
    job_path = Path(line)
    job = json.loads(job_path.read_text())
    out = job_path.parent
    # Into the job's directory: it was created after this process started.
    os.chdir(out)
    os.environ.update(job["environment"])
    tempfile.tempdir = job["environment"]["TMPDIR"]

    last = 0.0

    def report(fraction: float, stage: str) -> None:
        nonlocal last
        if time.monotonic() - last >= 0.25:
            last = time.monotonic()
            print(f"{fraction:.4f}", flush=True)

    config = AuditConfig.model_validate(job["config"])
    if config.runtime.threads is None and job["threads"] is not None:
        runtime = config.runtime.model_copy(update={"threads": job["threads"]})
        config = config.model_copy(update={"runtime": runtime})
    try:
        result = sweep_shard(
            job["model"],
            job["probes"],
            config,
            probes=None if job["span"] is None else tuple(job["span"]),
            progress=report,
            tuning_cache=None if job["tuning_cache"] is None else Path(job["tuning_cache"]),
        )
    except ShiftAuditError as error:
        (out / "error.json").write_text(json.dumps({"message": str(error)}))
        return _INPUT_ERROR_EXIT
    except Exception as error:
        if is_out_of_memory(error):
            return _MEMORY_EXIT
        raise
    (out / "result.json").write_text(result.model_dump_json())
    return 0


def _main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m shiftaudit.sandbox")
    parser.add_argument("--parent", type=int, required=True)
    parser.add_argument("--data-limit", type=int)
    args = parser.parse_args(argv)
    return _child(args.parent, args.data_limit)


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
