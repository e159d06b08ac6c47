"""Sweep a shard in a child process that an untrusted model cannot take its parent down with.

The child starts from a fresh interpreter (never a fork: no inherited CUDA context, database
connection or secret) with an allow-listed environment, runs in its own temporary directory
and session, and dies with its parent. The limits: data size (set in the child before torch
is imported), resident memory and wall time; a crash, a hang or a
runaway allocation becomes a `SandboxError` that names what happened, and a kill from outside
(SIGKILL or SIGTERM from an operator or the out-of-memory killer) a transient one, which the
caller runs again.

Run as `python -m shiftaudit.sandbox JOB.json`: progress goes to stdout, one fraction per line;
the result to `result.json` and a refused input to `error.json`, beside the job file.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import plain_message
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
) -> ShardResult:
    """Sweep in a child process; `on_tick(progress)` and `should_stop()` run every tick_s.

    Raises SandboxError for anything the child did wrong and `Stopped` when should_stop()
    turned true (the child is killed within one tick).
    """
    job = work_dir / "job.json"
    job.write_text(
        json.dumps(
            {
                "model": str(model),
                "probes": str(probes),
                "config": config,
                "span": span,
                "tuning_cache": None if tuning_cache is None else str(tuning_cache),
                "data_limit": limits.memory_bytes if limits.limit_data else None,
                "threads": limits.threads,
                "parent": os.getpid(),
            }
        )
    )
    stderr_path = work_dir / "stderr.txt"
    with stderr_path.open("wb") as stderr:
        child = subprocess.Popen(
            [sys.executable, "-m", "shiftaudit.sandbox", str(job)],
            cwd=work_dir,
            env=scrubbed_environment(work_dir),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
            start_new_session=True,  # its own process group: killed as a whole
        )
    progress = _ProgressReader(child)
    started = time.monotonic()
    try:
        while child.poll() is None:
            if should_stop():
                raise Stopped
            if time.monotonic() - started > limits.wall_time_s:
                raise SandboxError(
                    f"the audit exceeded its wall-time limit of {limits.wall_time_s:g} s "
                    "(a model that never returns?)"
                )
            if limits.memory_bytes is not None and _resident_bytes(child.pid) > limits.memory_bytes:
                raise SandboxError(_memory_message(limits))
            on_tick(progress.latest)
            _wait(child, tick_s)
    finally:
        if child.poll() is None:
            _kill(child)
        progress.join()
    return _outcome(child.returncode, work_dir, stderr_path, limits)


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
        log.info("audit refused its input: %s; the trace: %s", message, _tail(stderr_path))
        raise SandboxError(plain_message(message), input_error=True)
    if code == _MEMORY_EXIT:
        raise SandboxError(_memory_message(limits))
    # The child's last lines are a trace with the worker's paths: the worker's log keeps them,
    # the tenant gets one sentence.
    log.warning("audit process exited with %s; its last lines: %s", code, _tail(stderr_path))
    if code < 0:
        name = _signal_name(-code)
        if -code not in MODEL_FAULTS:
            raise SandboxError(
                f"the audit process was killed from outside ({name}), by an operator or the "
                "out-of-memory killer, not by the model",
                transient=True,
            )
        raise SandboxError(f"the model crashed the audit process ({name})")
    raise SandboxError(
        f"the audit process failed with exit code {code} (the worker's log has its last lines)"
    )


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:  # a real-time signal has no name of its own
        return f"signal {number}"


def _memory_message(limits: Limits) -> str:
    limit = "" if limits.memory_bytes is None else f" of {limits.memory_bytes / 2**20:.0f} MiB"
    return f"the model ran out of memory: the audit's memory limit{limit} was exceeded"


def _tail(path: Path, lines: int = 100) -> str:
    return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])


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
        assert child.stdout is not None
        self._stream = child.stdout
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        for line in self._stream:
            try:
                self.latest = min(1.0, max(0.0, float(line)))
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


def _child(job_path: Path) -> int:
    job = json.loads(job_path.read_text())
    _die_with_parent(job["parent"])
    if job["data_limit"] is not None:
        import resource

        limit = int(job["data_limit"])
        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    # Imported only now, under the limit.
    from .config import AuditConfig
    from .engine import sweep_shard
    from .errors import ShiftAuditError
    from .runtimes import is_out_of_memory

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
    out = job_path.parent
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
        traceback.print_exception(error)  # the whole trace, for the worker's log
        (out / "error.json").write_text(json.dumps({"message": str(error)}))
        return _INPUT_ERROR_EXIT
    except Exception as error:
        if is_out_of_memory(error):
            return _MEMORY_EXIT
        raise
    (out / "result.json").write_text(result.model_dump_json())
    return 0


if __name__ == "__main__":
    sys.exit(_child(Path(sys.argv[1])))
