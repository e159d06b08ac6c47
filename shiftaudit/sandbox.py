"""Sweep a shard in a child process that an untrusted model cannot take its parent down with.

The child comes from a fresh interpreter (never a fork of the worker: no inherited CUDA
context, database connection or secret) with an allow-listed environment, runs in its own
temporary directory and session, and dies with the worker. The limits: data size (set
before torch is imported), resident memory and wall time; a crash, a hang or a runaway
allocation becomes a `SandboxError` that names what happened, and a kill from outside
(SIGKILL or SIGTERM from an operator or the out-of-memory killer) a transient one, which the
caller runs again.

Starting that interpreter and importing torch and the engine takes seconds, longer than a
small audit's sweep, so a worker keeps a fork server (`WarmSandbox`): one sandbox process
started ahead of the jobs, engine imported and limits applied, that never runs a job itself
and forks one fresh child per job. The job's path (with the child's progress pipe and stderr
file) arrives on the fork server's socket; the child takes its own session, moves into the
job's directory, runs that one job and exits; the fork server reports its exit status. A
child never runs two jobs, so nothing a model leaves in its process (globals, caches,
threads) reaches another tenant's audit, and the fork server sees no tenant's data.

Run as `python -m shiftaudit.sandbox --parent PID [--data-limit BYTES]` (cold: one job, its
path on stdin) or with `--zygote` (a fork server: a control socket as stdin). A job's child
writes progress to stdout, one fraction per line; the result to `result.json` and a refused
input to `error.json`, beside the job file.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import queue
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

from .allocator import keep_freed_memory
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
    warm: WarmSandbox | None = None,
) -> ShardResult:
    """Sweep in a child process; `on_tick(progress)` and `should_stop()` run every tick_s.

    With `warm`, the sweep runs in a child forked by the worker's fork server (a new fork
    server if that died or was started with other limits); without, in a fresh interpreter.
    Raises SandboxError for anything the child did wrong and `Stopped` when should_stop()
    turned true (the child is killed within one tick).
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
    child: _Run | None = warm.fork(job, limits) if warm is not None else None
    if child is None:  # cold: a fresh interpreter, started in the job's own directory
        cold = _Child.start(work_dir, limits)
        cold.hand(job)
        child = cold
    started = time.monotonic()
    try:
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
        return _outcome(child.process.wait(), work_dir, child.stderr_path, limits)
    finally:
        child.close()


class _Process(Protocol):
    """What the sweep loop needs of a sandbox process: a Popen, or a child of the fork
    server (`_Forked`), whose exit status comes from the fork server."""

    @property
    def pid(self) -> int: ...

    @property
    def returncode(self) -> int | None: ...

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int: ...


class _Run(Protocol):
    """One job's sandbox process, from its hand-over to its end."""

    @property
    def process(self) -> _Process: ...

    @property
    def progress(self) -> _ProgressReader: ...

    @property
    def stderr_path(self) -> Path: ...

    def close(self) -> None: ...


class _Child:
    """A cold sandbox process: a fresh interpreter started for one job, in its directory."""

    def __init__(self, process: subprocess.Popen[bytes], home: Path) -> None:
        self.process = process
        assert process.stdout is not None
        self.progress = _ProgressReader(process.stdout)
        self.stderr_path = home / "stderr.txt"

    @classmethod
    def start(cls, home: Path, limits: Limits) -> _Child:
        """Start a child in `home`. It dies with the thread that calls this
        (PR_SET_PDEATHSIG): call it from the thread that runs the worker's jobs."""
        command = [sys.executable, "-m", "shiftaudit.sandbox", "--parent", str(os.getpid())]
        command += _data_limit_arguments(limits)
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
        return cls(process, home)

    def hand(self, job: Path) -> None:
        """Give the child its one job (and close stdin: there is no second). If it died
        already, its exit status says why."""
        assert self.process.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            self.process.stdin.write(f"{job}\n".encode())
            self.process.stdin.close()

    def close(self) -> None:
        """Kill what is left of it (its whole group) and reap it."""
        if self.process.poll() is None:
            _kill(self.process)
        with contextlib.suppress(OSError):
            if self.process.stdin is not None:
                self.process.stdin.close()
        self.progress.join()


def _data_limit_arguments(limits: Limits) -> list[str]:
    data_limit = limits.memory_bytes if limits.limit_data else None
    return [] if data_limit is None else ["--data-limit", str(data_limit)]


def _start_key(limits: Limits) -> tuple[object, ...]:
    """What a fork server is started with: it serves only jobs that would have started the
    same one (data limit, environment, interpreter)."""
    environment = scrubbed_environment(Path("."))
    return (
        limits.memory_bytes if limits.limit_data else None,
        sys.executable,
        tuple(sorted((k, v) for k, v in environment.items() if k not in ("HOME", "TMPDIR"))),
    )


# How long a job waits for the fork server to fork its child: it forks at once unless it is
# still importing the engine (seconds on a busy machine); past this it is taken as wedged.
_FORK_TIMEOUT_S = 120.0


class _Zygote:
    """The worker's side of one fork server: its process, its control socket and a thread
    that reads the socket ("ready", "started PID", "exit PID CODE")."""

    def __init__(
        self, process: subprocess.Popen[bytes], control: socket.socket, home: Path, key: object
    ) -> None:
        self.process, self.home, self.key = process, home, key
        self.ready = threading.Event()  # it has imported the engine
        self._control = control
        self._started: queue.Queue[int] = queue.Queue()
        self._exits: dict[int, int] = {}
        self._gone = False  # its socket closed: it died, and its children with it
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    @classmethod
    def start(cls, home: Path, limits: Limits) -> _Zygote:
        """Start a fork server in `home` (its working, home and temporary directory). It dies
        with the thread that calls this (PR_SET_PDEATHSIG), and each of its children with it:
        call it from the thread that runs the worker's jobs."""
        # Datagram-like messages (no framing to get wrong) that can carry file descriptors.
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        command = [sys.executable, "-m", "shiftaudit.sandbox", "--zygote"]
        command += ["--parent", str(os.getpid()), *_data_limit_arguments(limits)]
        try:
            with (home / "stderr.txt").open("wb") as stderr:
                process = subprocess.Popen(
                    command,
                    cwd=home,
                    env=scrubbed_environment(home),
                    stdin=theirs.fileno(),  # the control socket is its fd 0
                    stdout=subprocess.DEVNULL,
                    stderr=stderr,
                    start_new_session=True,
                )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        return cls(process, ours, home, _start_key(limits))

    def _read(self) -> None:
        while True:
            try:
                message = self._control.recv(256)
            except OSError:
                message = b""
            if not message:
                break
            kind, *values = message.split()
            if kind == b"ready":
                self.ready.set()
            elif kind == b"started":
                self._started.put(int(values[0]))
            elif kind == b"exit":
                with self._changed:
                    self._exits[int(values[0])] = int(values[1])
                    self._changed.notify_all()
        with self._changed:
            self._gone = True
            self._changed.notify_all()
        self._started.put(-1)  # wakes a job waiting for its fork

    def alive(self) -> bool:
        return not self._gone and self.process.poll() is None

    def fork(self, job: Path) -> _ForkedChild | None:
        """Have the fork server fork a child for `job`; None if it is dead (or wedged)."""
        stderr_path = job.parent / "stderr.txt"
        read_end, write_end = os.pipe()
        try:
            # The child's progress pipe and stderr file travel with the job (SCM_RIGHTS):
            # the child gets the worker's pipe, as a Popen child would.
            with stderr_path.open("wb") as stderr:
                socket.send_fds(self._control, [str(job).encode()], [write_end, stderr.fileno()])
        except OSError:
            os.close(read_end)
            return None
        finally:
            os.close(write_end)
        try:
            pid = self._started.get(timeout=_FORK_TIMEOUT_S)
        except queue.Empty:
            pid = -1
        if pid < 0:
            os.close(read_end)
            return None
        return _ForkedChild(_Forked(self, pid), os.fdopen(read_end, "rb"), stderr_path)

    def exit_code(self, pid: int, timeout: float | None) -> int | None:
        """The child's exit status as Popen gives it (-N for signal N), once it has ended."""
        with self._changed:
            self._changed.wait_for(lambda: pid in self._exits or self._gone, timeout)
            if pid in self._exits:
                return self._exits.pop(pid)
            if self._gone:
                # Its fork server died first, so the kernel killed it (PR_SET_PDEATHSIG):
                # killed from outside, as far as the model goes.
                return -signal.SIGKILL
            return None

    def close(self) -> None:
        """End the fork server (its children die with it), remove its directory."""
        if self.process.poll() is None:
            _kill(self.process)
        with contextlib.suppress(OSError):
            self._control.shutdown(socket.SHUT_RDWR)
        self._reader.join(timeout=5)
        self._control.close()
        shutil.rmtree(self.home, ignore_errors=True)


class _Forked:
    """A job's child forked by the fork server, to the sweep loop what a Popen is: the worker
    is not its parent, so it cannot wait for it; the fork server reports its exit status."""

    def __init__(self, zygote: _Zygote, pid: int) -> None:
        self._zygote, self.pid = zygote, pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self._zygote.exit_code(self.pid, timeout=0)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            self.returncode = self._zygote.exit_code(self.pid, timeout)
            if self.returncode is None:
                raise subprocess.TimeoutExpired(f"sandbox {self.pid}", timeout or 0.0)
        return self.returncode


class _ForkedChild:
    def __init__(self, process: _Forked, progress: IO[bytes], stderr_path: Path) -> None:
        self.process, self.stderr_path = process, stderr_path
        self.progress = _ProgressReader(progress)

    def close(self) -> None:
        """Kill what is left of it (its own process group: it called setsid)."""
        if self.process.poll() is None:
            _kill(self.process)
        self.progress.join()


class WarmSandbox:
    """A fork server per worker process: a sandbox process started ahead of the jobs, with
    the engine imported and limits applied, that forks one fresh child per job.

    The fork server itself never runs a job, never runs a torch operation or creates an ONNX
    Runtime session and starts no thread (a fork would copy a thread pool's state but not its
    threads); it sees no tenant's data but job paths. Each child runs one job and exits, so
    nothing a model leaves in its process (globals, caches, threads) reaches another audit.
    A fork server that died (the out-of-memory killer, an operator) is replaced without the
    job noticing; one started with other limits is replaced by one with this job's. It
    lives in a `root/<prefix>...` directory (so that a worker's start-up clean-up can tell a
    dead worker's from a live one's). Call `prepare` and `fork` from the worker's job thread:
    the fork server dies with the thread that started it.
    """

    def __init__(self, root: Path, prefix: str = "warm-") -> None:
        self.root, self.prefix = root, prefix
        self._zygote: _Zygote | None = None
        self._lock = threading.Lock()
        atexit.register(self.close)

    def prepare(self, limits: Limits) -> int:
        """Start a fork server for these limits unless one runs; its pid."""
        with self._lock:
            return self._prepare(limits).process.pid

    def _prepare(self, limits: Limits) -> _Zygote:
        zygote = self._zygote
        if zygote is not None and not zygote.alive():
            self._discard(zygote, "died while it waited for a job")
            zygote = None
        elif zygote is not None and zygote.key != _start_key(limits):
            zygote.close()  # started for other limits (settings changed): not this job's
            zygote = self._zygote = None
        if zygote is None:
            self.root.mkdir(parents=True, exist_ok=True)
            home = Path(tempfile.mkdtemp(prefix=self.prefix, dir=self.root))
            zygote = self._zygote = _Zygote.start(home, limits)
        return zygote

    def _discard(self, zygote: _Zygote, why: str) -> None:
        log.warning(
            "the sandbox's fork server %s %s (exit status %s); starting another",
            zygote.process.pid,
            why,
            zygote.process.poll(),
        )
        zygote.close()
        self._zygote = None

    def prepare_quietly(self, limits: Limits) -> None:
        """`prepare`, where failing to start one must not fail the job at hand (the job
        then starts a cold child)."""
        try:
            self.prepare(limits)
        except OSError as error:
            log.warning("could not start the sandbox's fork server: %s", error)

    def fork(self, job: Path, limits: Limits) -> _ForkedChild | None:
        """A fresh child running `job`, forked by a fork server for these limits (a new one
        if the last one died); None if none could be started (then run it cold)."""
        with self._lock:
            for _ in range(2):
                try:
                    zygote = self._prepare(limits)
                except OSError as error:
                    log.warning("could not start the sandbox's fork server: %s", error)
                    return None
                child = zygote.fork(job)
                if child is not None:
                    log.info(
                        "sandbox %d forked by the fork server %d for its job",
                        child.process.pid,
                        zygote.process.pid,
                    )
                    return child
                self._discard(zygote, "died before it forked the job")
            return None

    def waiting(self, *, ready_within: float = 0.0) -> int | None:
        """The pid of the fork server, if it runs; with `ready_within`, only once it has
        imported the engine (waiting up to that many seconds)."""
        with self._lock:
            zygote = self._zygote
        if zygote is None or not zygote.alive():
            return None
        if ready_within and not zygote.ready.wait(ready_within):
            return None
        return zygote.process.pid

    def close(self) -> None:
        """End the fork server (at shutdown)."""
        with self._lock:
            zygote, self._zygote = self._zygote, None
        if zygote is not None:
            zygote.close()


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


def _wait(child: _Process, seconds: float) -> None:
    with contextlib.suppress(subprocess.TimeoutExpired):
        child.wait(timeout=seconds)


def _kill(child: _Process) -> None:
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

    def __init__(self, stream: IO[bytes]) -> None:
        self.latest = 0.0
        self.first_at: float | None = None  # when the first progress came: a forward ran
        self._stream = stream
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        for line in self._stream:
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


def _limit_data(data_limit: int | None) -> None:
    if data_limit is not None:
        import resource

        resource.setrlimit(resource.RLIMIT_DATA, (data_limit, data_limit))


# Imported by the fork server: the loader of `torch.export` programs imports them on first
# use (dynamo, the serialiser), 1.5 s of a small audit's latency here. Not the ONNX exporter
# that tuning may try: it is needed once per model (the choice is cached). Importing them
# starts no thread (tests/test_sandbox.py checks the fork server has one).
_PRELOADED = (
    "torch.export.pt2_archive._package",
    "torch._export.serde.serialize",
    "torch.export._trace",
)


def _import_engine() -> None:
    """What every job needs, imported once in the fork server (under its data limit)."""
    import importlib

    for name in ("shiftaudit.config", "shiftaudit.engine", "shiftaudit.runtimes", *_PRELOADED):
        with contextlib.suppress(ImportError):
            importlib.import_module(name)


def _child(parent: int, data_limit: int | None) -> int:
    """A cold sandbox process: its one job's path arrives on stdin."""
    _die_with_parent(parent)
    _limit_data(data_limit)  # before torch is imported
    keep_freed_memory()
    _import_engine()
    line = sys.stdin.readline().strip()
    if not line:  # stdin closed without a job: the worker is shutting down, or gone
        return 0
    return _run_job(Path(line))


def _zygote(parent: int, data_limit: int | None) -> int:
    """The fork server: import the engine once, then fork one child per job path that comes
    on the control socket (fd 0), with the child's stdout and stderr passed along."""
    _die_with_parent(parent)
    _limit_data(data_limit)
    keep_freed_memory()  # the forked children inherit it
    _import_engine()
    control = socket.socket(fileno=0)
    # SIGCHLD wakes the loop through a pipe: the loop reaps each ended child and reports its
    # exit status, which the worker (not its parent) cannot wait for.
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_read, False)
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write)
    signal.signal(signal.SIGCHLD, lambda number, frame: None)
    control.sendall(b"ready")
    while True:
        readable = select.select([control.fileno(), wake_read], [], [])[0]
        if wake_read in readable:
            with contextlib.suppress(BlockingIOError):
                while os.read(wake_read, 512):
                    pass
        _reap(control)
        if control.fileno() not in readable:
            continue
        message, fds, _, _ = socket.recv_fds(control, 4096, 2)
        if not message:  # the worker closed its end: shutting down
            return 0
        if len(fds) != 2:
            for fd in fds:
                os.close(fd)
            continue
        sys.stdout.flush()
        sys.stderr.flush()
        server = os.getpid()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                control.detach()  # fd 0, replaced below, not closed
                os.close(wake_read)
                os.close(wake_write)
                code = _forked(server, Path(message.decode()), fds[0], fds[1])
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else 1
            except BaseException:
                traceback.print_exc()
            finally:
                with contextlib.suppress(Exception):
                    sys.stdout.flush()
                    sys.stderr.flush()
                os._exit(code)
        for fd in fds:
            os.close(fd)
        control.sendall(f"started {pid}".encode())


def _reap(control: socket.socket) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        control.sendall(f"exit {pid} {os.waitstatus_to_exitcode(status)}".encode())


def _forked(server: int, job_path: Path, progress: int, stderr: int) -> int:
    """A child of the fork server, before its job: its own session (the worker kills its
    group), death with the fork server (hence the worker), its own stdio."""
    os.setsid()
    _die_with_parent(server)
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(progress, 1)
    os.dup2(stderr, 2)
    for fd in (null, progress, stderr):
        os.close(fd)
    return _run_job(job_path)


def _run_job(job_path: Path) -> int:
    from .config import AuditConfig
    from .engine import sweep_shard
    from .errors import ShiftAuditError
    from .runtimes import is_out_of_memory

    job = json.loads(job_path.read_text())
    out = job_path.parent
    # Into the job's directory: it was created after this process (or its fork server)
    # started.
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
        traceback.print_exception(error)  # the whole trace, for the worker's log
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
    parser.add_argument("--zygote", action="store_true", help="be a fork server")
    args = parser.parse_args(argv)
    if args.zygote:
        return _zygote(args.parent, args.data_limit)
    return _child(args.parent, args.data_limit)


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
