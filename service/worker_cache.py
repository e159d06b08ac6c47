"""A worker's local cache of artifacts, by sha256, verified before every use.

Workers fetch each model and probe set from the artifact storage once, not once per audit.
A cached file is hashed again before each use: a sandboxed sweep runs untrusted code that
could have modified it, and a tampered file must be fetched again, never used. A fetch that
meets a storage outage (`TransientStorageError`) is tried again with backoff for up to
`retry_s` before the shard fails: a storage blip must not fail an audit.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from service.backoff import retry
from service.storage import ArtifactStorage, TransientStorageError
from shiftaudit.files import sha256_file

FETCH_RETRY_S = 120.0


class ArtifactCache:
    """Files at `directory/sha256`; least recently used ones go beyond `max_bytes`."""

    def __init__(
        self,
        directory: Path,
        storage: ArtifactStorage,
        *,
        max_bytes: int,
        retry_s: float = FETCH_RETRY_S,
    ) -> None:
        self.directory = directory
        self.storage = storage
        self.max_bytes = max_bytes
        self.retry_s = retry_s
        directory.mkdir(parents=True, exist_ok=True)

    @contextlib.contextmanager
    def use(self, sha256: str) -> Iterator[Path]:
        """The verified local copy of object `sha256`, fetched if missing or altered."""
        path = self.directory / sha256
        if not (path.is_file() and sha256_file(path) == sha256):
            self._fetch(sha256, path)
        os.utime(path)  # marks it recently used
        self._evict(keep=path)
        yield path

    def _fetch(self, sha256: str, path: Path) -> None:
        """Fetch (verified while copying, renamed into place), through outages up to
        `retry_s` long."""
        retry(
            lambda: self.storage.fetch(sha256, path),
            transient=TransientStorageError,
            budget_s=self.retry_s,
            max_delay_s=15.0,
            what=f"fetching {sha256} from the artifact storage",
        )

    def _evict(self, *, keep: Path) -> None:
        files = [p for p in self.directory.iterdir() if p.is_file() and p != keep]
        total = keep.stat().st_size + sum(p.stat().st_size for p in files)
        for path in sorted(files, key=lambda p: p.stat().st_mtime):
            if total <= self.max_bytes:
                break
            total -= path.stat().st_size
            path.unlink(missing_ok=True)
