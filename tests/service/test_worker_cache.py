"""A worker's artifact cache: fetched once, verified on every use, bounded in size."""

from __future__ import annotations

import hashlib
import threading

import boto3
import pytest
from botocore.config import Config

from service.storage import LocalStorage, S3Storage, StorageError, TransientStorageError
from service.worker_cache import ArtifactCache
from tests.workers.proxy import CuttableProxy

from . import test_storage
from .test_storage import BUCKET, REGION

# test_storage's moto server and fake AWS credentials, as fixtures of this module too.
s3_endpoint = test_storage.s3_endpoint
_fake_aws_env = test_storage._fake_aws_env


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


def _s3_behind(proxy: CuttableProxy, tmp_path) -> S3Storage:
    """Storage that reaches moto through `proxy`, with boto3's own retries off: what is
    tested is the cache's waiting out an outage."""
    client = boto3.client(
        "s3",
        endpoint_url=f"http://127.0.0.1:{proxy.port}",
        region_name=REGION,
        config=Config(retries={"total_max_attempts": 1}, connect_timeout=2, read_timeout=5),
    )
    return S3Storage(bucket=BUCKET, client=client, tmp_dir=tmp_path / "spool")


def test_a_fetch_waits_out_a_storage_outage_within_its_budget(s3_endpoint, tmp_path):
    host, port = s3_endpoint.removeprefix("http://").split(":")
    proxy = CuttableProxy(host, int(port))
    storage = _s3_behind(proxy, tmp_path)
    sha = _store(storage, b"model bytes")
    proxy.cut()
    restore = threading.Timer(1.5, proxy.restore)
    restore.start()
    cache = ArtifactCache(tmp_path / "cache", storage, max_bytes=1 << 20, retry_s=30)
    with cache.use(sha) as path:
        assert path.read_bytes() == b"model bytes"
    restore.join()

    proxy.cut()  # longer than the budget: the outage is reported as such
    short = ArtifactCache(tmp_path / "other", storage, max_bytes=1 << 20, retry_s=1)
    with pytest.raises(TransientStorageError, match="s3 download"), short.use(sha):
        pass
    proxy.restore()


def test_a_missing_object_is_not_retried(s3_endpoint, tmp_path):
    host, port = s3_endpoint.removeprefix("http://").split(":")
    storage = _s3_behind(CuttableProxy(host, int(port)), tmp_path)
    calls = []
    fetch = storage.fetch
    storage.fetch = lambda sha, path: (calls.append(sha), fetch(sha, path))[1]  # type: ignore[method-assign]
    cache = ArtifactCache(tmp_path / "cache", storage, max_bytes=1 << 20, retry_s=60)
    with pytest.raises(StorageError, match="not found") as raised, cache.use("0" * 64):
        pass
    assert not isinstance(raised.value, TransientStorageError)
    assert len(calls) == 1
