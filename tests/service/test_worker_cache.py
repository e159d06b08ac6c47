"""A worker's artifact cache: fetched once, verified on every use, bounded in size."""

from __future__ import annotations

import hashlib

from service.storage import LocalStorage
from service.worker_cache import ArtifactCache


def _store(storage, payload: bytes) -> str:
    return storage.put_stream([payload], max_bytes=1 << 20).sha256


def test_a_cached_artifact_is_fetched_once_and_refetched_when_altered(tmp_path):
    storage = LocalStorage(tmp_path / "store")
    sha = _store(storage, b"model bytes")
    cache = ArtifactCache(tmp_path / "cache", storage, max_bytes=1 << 20)
    with cache.use(sha) as path:
        assert path.read_bytes() == b"model bytes"
        first_inode = path.stat().st_ino
    with cache.use(sha) as path:
        assert path.stat().st_ino == first_inode  # served from the cache
    path.write_bytes(b"tampered by a sweep")  # what an untrusted model could do
    with cache.use(sha) as path:
        assert path.read_bytes() == b"model bytes"
        assert hashlib.sha256(path.read_bytes()).hexdigest() == sha


def test_the_least_recently_used_artifacts_go_beyond_the_size_limit(tmp_path):
    storage = LocalStorage(tmp_path / "store")
    shas = [_store(storage, bytes([i]) * 400) for i in range(3)]
    cache = ArtifactCache(tmp_path / "cache", storage, max_bytes=1000)
    for sha in shas:
        with cache.use(sha):
            pass
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == sorted(shas[1:])
