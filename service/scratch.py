"""Scratch space that a restart can clean.

Every scratch directory (and storage spool file) is named after the process that owns it:
`<kind>-<owner>-<random>`, the owner being `<host>.<pid>.<start time>`: a hash of the host
name (a volume may be shared between containers, whose pids mean nothing here), the pid, and
its start time in clock ticks since boot (which tells a reused pid, as after a container
restart, from the process that wrote the entry; without /proc the pid alone). A process
killed with SIGKILL removes nothing, so `serve` and `worker` call `remove_stale` on start: it
removes every entry of this host whose process is gone, and entries that name no owner at
all (an older version's), and leaves live processes' and other hosts' entries alone.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

# "<kind>-<host>.<pid>[.<start>]-..."; kinds are lower-case words, the storage's spools too.
_OWNED = re.compile(r"^[a-z]+-([0-9a-f]{8})\.(\d+)(?:\.(\d+))?-")


def _host() -> str:
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def owner() -> str:
    """This process, as scratch names carry it."""
    pid = os.getpid()
    started = _start_ticks(pid)
    return f"{_host()}.{pid}" if started is None else f"{_host()}.{pid}.{started}"


def _start_ticks(pid: int) -> int | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[19])


def _alive(pid: int, started: int | None) -> bool:
    if started is not None:
        return _start_ticks(pid) == started
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process: alive
    return True


def owned_by_live_process(name: str) -> bool:
    """Whether the entry `name` may belong to a process that is still running: one of this
    host that runs, or one of another host (which cannot be told from here)."""
    match = _OWNED.match(name)
    if match is None:
        return False
    host, pid, started = match.group(1), int(match.group(2)), match.group(3)
    if host != _host():
        return True
    return _alive(pid, None if started is None else int(started))


@contextlib.contextmanager
def scratch_directory(root: Path, kind: str) -> Iterator[Path]:
    """A fresh directory `root/<kind>-<owner>-<random>` for one request or job, removed on
    exit (and, should the process die first, by the next `remove_stale` of `root`)."""
    root.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=f"{kind}-{owner()}-", dir=root))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def process_directory(root: Path, kind: str) -> Path:
    """`root/<kind>-<owner>-`, this process's own for as long as it runs (for scratch that
    outlives one request, such as open probe sets kept for thumbnails)."""
    path = root / f"{kind}-{owner()}-"
    path.mkdir(parents=True, exist_ok=True)
    return path


def remove_stale(root: Path) -> list[str]:
    """Remove the entries of `root` that no running process of this host owns; returns their
    names."""
    if not root.is_dir():
        return []
    removed = []
    for entry in sorted(root.iterdir()):
        if owned_by_live_process(entry.name):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry.name)
    return removed
