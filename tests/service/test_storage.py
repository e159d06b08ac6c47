"""Contract tests for service.storage, run against LocalStorage and a real (moto) S3 server."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer

from service.storage import (
    ArtifactStorage,
    ArtifactTooLarge,
    LocalStorage,
    S3Storage,
    StorageError,
    StoredArtifact,
    storage_from_url,
)

BUCKET = "shiftaudit-artifacts"
REGION = "us-east-1"
MB = 1 << 20


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """A moto S3 server on a free loopback port (port=0: the OS picks it)."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    _client(endpoint).create_bucket(Bucket=BUCKET)
    yield endpoint
    server.stop()


def _client(endpoint: str) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id="test",
        aws_secret_access_key="test",  # moto accepts anything
    )


@pytest.fixture(autouse=True)
def _fake_aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # Credentials for clients built from the environment; nothing may reach real AWS.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)


@dataclass
class Backend:
    storage: ArtifactStorage
    tmp_dir: Path  # where put_stream spools
    tamper: Callable[[str, bytes], None]  # overwrite the stored object behind the storage's back
    stored_keys: Callable[[], list[str]]  # everything the backend holds


@pytest.fixture(params=["local", "s3"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "local":
        root = tmp_path / "store"
        local = LocalStorage(root)

        def tamper_local(sha: str, data: bytes) -> None:
            (root / "objects" / sha[:2] / sha).write_bytes(data)

        def local_keys() -> list[str]:
            return sorted(p.name for p in (root / "objects").rglob("*") if p.is_file())

        return Backend(local, root / "tmp", tamper_local, local_keys)

    endpoint = request.getfixturevalue("s3_endpoint")
    client = _client(endpoint)
    prefix = f"test-{uuid.uuid4().hex}/"  # one bucket per module, one prefix per test
    spool = tmp_path / "s3tmp"
    s3 = S3Storage(bucket=BUCKET, prefix=prefix, client=client, tmp_dir=spool)

    def tamper_s3(sha: str, data: bytes) -> None:
        client.put_object(Bucket=BUCKET, Key=f"{prefix}{sha[:2]}/{sha}", Body=data)

    def s3_keys() -> list[str]:
        listing = client.list_objects_v2(Bucket=BUCKET, Prefix=prefix)
        return sorted(obj["Key"] for obj in listing.get("Contents", []))

    return Backend(s3, spool, tamper_s3, s3_keys)


def _chunks(data: bytes, size: int) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class CountingStream:
    """A generator wrapper that counts the chunks the storage actually pulled."""

    def __init__(self, total: int, chunk: int) -> None:
        self.total, self.chunk, self.pulled = total, chunk, 0

    def __iter__(self) -> Iterator[bytes]:
        sent = 0
        while sent < self.total:
            self.pulled += 1
            sent += self.chunk
            yield b"x" * self.chunk


# --- contract, both backends ---


def test_round_trip(backend: Backend, tmp_path: Path) -> None:
    data = bytes(range(256)) * 1000 + b"tail"
    artifact = backend.storage.put_stream(_chunks(data, 4096), max_bytes=MB)
    assert artifact == StoredArtifact(_sha(data), len(data))
    assert backend.storage.exists(artifact.sha256)
    assert backend.storage.size(artifact.sha256) == len(data)
    dest = tmp_path / "out" / "model.onnx"
    assert backend.storage.fetch(artifact.sha256, dest) == dest
    assert dest.read_bytes() == data
    assert list(backend.tmp_dir.iterdir()) == []


def test_multipart_sized_round_trip(backend: Backend, tmp_path: Path) -> None:
    # Past boto3's 8 MB multipart threshold, so S3 uploads in parts.
    data = hashlib.sha512(b"seed").digest() * (9 * MB // 64 + 3)
    artifact = backend.storage.put_stream(_chunks(data, MB), max_bytes=10 * MB)
    assert artifact == StoredArtifact(_sha(data), len(data))
    assert backend.storage.fetch(artifact.sha256, tmp_path / "big").read_bytes() == data


def test_put_is_idempotent(backend: Backend) -> None:
    data = b"same bytes" * 100
    first = backend.storage.put_stream([data], max_bytes=MB)
    second = backend.storage.put_stream(_chunks(data, 7), max_bytes=MB)
    assert first == second
    assert len(backend.stored_keys()) == 1
    assert list(backend.tmp_dir.iterdir()) == []


@pytest.mark.parametrize("sizes", [[1, 0, 3, 1000, 17], [65537, 1], [0, 0, 5]])
def test_odd_chunk_sizes(backend: Backend, tmp_path: Path, sizes: list[int]) -> None:
    pieces = [bytes([i % 251]) * n for i, n in enumerate(sizes)]
    data = b"".join(pieces)
    artifact = backend.storage.put_stream(iter(pieces), max_bytes=MB)
    assert artifact == StoredArtifact(_sha(data), len(data))
    assert backend.storage.fetch(artifact.sha256, tmp_path / "f").read_bytes() == data


def test_empty_artifact(backend: Backend, tmp_path: Path) -> None:
    artifact = backend.storage.put_stream([], max_bytes=0)
    assert artifact == StoredArtifact(_sha(b""), 0)
    assert backend.storage.size(artifact.sha256) == 0
    assert backend.storage.fetch(artifact.sha256, tmp_path / "e").read_bytes() == b""


def test_exact_limit_is_allowed(backend: Backend) -> None:
    artifact = backend.storage.put_stream([b"a" * 10, b"b" * 10], max_bytes=20)
    assert artifact.size == 20


def test_too_large_stops_streaming_and_leaves_nothing(backend: Backend) -> None:
    stream = CountingStream(total=10 * MB, chunk=64 * 1024)
    with pytest.raises(ArtifactTooLarge) as info:
        backend.storage.put_stream(iter(stream), max_bytes=MB)
    assert info.value.limit == MB
    # 16 chunks make exactly 1 MB; the 17th crosses the limit. 160 would be the whole stream.
    assert stream.pulled == 17
    assert backend.stored_keys() == []
    assert list(backend.tmp_dir.iterdir()) == []


def test_failing_stream_leaves_nothing(backend: Backend) -> None:
    def broken() -> Iterator[bytes]:
        yield b"partial upload" * 1000
        raise ConnectionResetError("client went away")

    with pytest.raises(ConnectionResetError):
        backend.storage.put_stream(broken(), max_bytes=MB)
    assert backend.stored_keys() == []
    assert list(backend.tmp_dir.iterdir()) == []


def test_fetch_detects_corruption(backend: Backend, tmp_path: Path) -> None:
    artifact = backend.storage.put_stream([b"genuine model bytes"], max_bytes=MB)
    backend.tamper(artifact.sha256, b"tampered model bytes")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(StorageError, match="corrupt"):
        backend.storage.fetch(artifact.sha256, out_dir / "model.onnx")
    assert list(out_dir.iterdir()) == []  # no destination, no partial temp file


def test_fetch_keeps_existing_destination_on_corruption(backend: Backend, tmp_path: Path) -> None:
    artifact = backend.storage.put_stream([b"genuine"], max_bytes=MB)
    backend.tamper(artifact.sha256, b"evil")
    dest = tmp_path / "model.onnx"
    dest.write_bytes(b"previous")
    with pytest.raises(StorageError, match="corrupt"):
        backend.storage.fetch(artifact.sha256, dest)
    assert dest.read_bytes() == b"previous"


def test_missing_object(backend: Backend, tmp_path: Path) -> None:
    sha = _sha(b"never stored")
    assert not backend.storage.exists(sha)
    with pytest.raises(StorageError, match="not found"):
        backend.storage.size(sha)
    with pytest.raises(StorageError, match="not found"):
        backend.storage.fetch(sha, tmp_path / "x")
    assert not (tmp_path / "x").exists()
    with pytest.raises(StorageError), backend.storage.open_local(sha):
        pass
    backend.storage.delete(sha)  # no error when absent


@pytest.mark.parametrize(
    "bad",
    ["../x", "../" + "a" * 61, "A" * 64, "a" * 63, "a" * 65, "g" * 64, "", "a" * 62 + "/b"],
)
def test_invalid_sha_refused(backend: Backend, tmp_path: Path, bad: str) -> None:
    storage = backend.storage
    with pytest.raises(StorageError, match="invalid sha256"):
        storage.exists(bad)
    with pytest.raises(StorageError, match="invalid sha256"):
        storage.size(bad)
    with pytest.raises(StorageError, match="invalid sha256"):
        storage.fetch(bad, tmp_path / "x")
    with pytest.raises(StorageError, match="invalid sha256"), storage.open_local(bad):
        pass
    with pytest.raises(StorageError, match="invalid sha256"):
        storage.delete(bad)
    assert not (tmp_path / "x").exists()


def test_open_local(backend: Backend) -> None:
    data = b"weights" * 5000
    artifact = backend.storage.put_stream([data], max_bytes=MB)
    with backend.storage.open_local(artifact.sha256) as path:
        assert path.read_bytes() == data
    if isinstance(backend.storage, S3Storage):
        assert not path.exists()
        assert list(backend.tmp_dir.iterdir()) == []
    else:
        assert path.exists()  # the local backend hands out the object itself


@pytest.mark.parametrize("backend", ["s3"], indirect=True)  # local hands out the object itself
def test_open_local_detects_corruption(backend: Backend) -> None:
    artifact = backend.storage.put_stream([b"genuine"], max_bytes=MB)
    backend.tamper(artifact.sha256, b"evil")
    with pytest.raises(StorageError, match="corrupt"), backend.storage.open_local(artifact.sha256):
        pass
    assert list(backend.tmp_dir.iterdir()) == []


def test_delete(backend: Backend) -> None:
    kept = backend.storage.put_stream([b"kept"], max_bytes=MB)
    gone = backend.storage.put_stream([b"gone"], max_bytes=MB)
    backend.storage.delete(gone.sha256)
    assert not backend.storage.exists(gone.sha256)
    assert backend.storage.exists(kept.sha256)
    backend.storage.delete(gone.sha256)
    assert len(backend.stored_keys()) == 1


async def _agen(pieces: list[bytes]) -> AsyncIterator[bytes]:
    for piece in pieces:
        await asyncio.sleep(0)
        yield piece


def test_async_put(backend: Backend, tmp_path: Path) -> None:
    pieces = [b"a" * 1000, b"", b"b" * 3, b"c" * 70000]
    data = b"".join(pieces)
    artifact = asyncio.run(backend.storage.put_async_stream(_agen(pieces), max_bytes=MB))
    assert artifact == StoredArtifact(_sha(data), len(data))
    assert backend.storage.fetch(artifact.sha256, tmp_path / "a").read_bytes() == data
    again = asyncio.run(backend.storage.put_async_stream(_agen([data]), max_bytes=MB))
    assert again == artifact
    assert list(backend.tmp_dir.iterdir()) == []


def test_async_too_large_stops_streaming(backend: Backend) -> None:
    pulled = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal pulled
        for _ in range(160):
            pulled += 1
            yield b"y" * (64 * 1024)

    with pytest.raises(ArtifactTooLarge):
        asyncio.run(backend.storage.put_async_stream(endless(), max_bytes=MB))
    assert pulled == 17
    assert backend.stored_keys() == []
    assert list(backend.tmp_dir.iterdir()) == []


def test_negative_limit_rejected(backend: Backend) -> None:
    with pytest.raises(ValueError, match="max_bytes"):
        backend.storage.put_stream([b"x"], max_bytes=-1)


# --- local specifics ---


def test_local_layout(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "root")
    artifact = storage.put_stream([b"layout"], max_bytes=MB)
    sha = artifact.sha256
    assert (tmp_path / "root" / "objects" / sha[:2] / sha).read_bytes() == b"layout"
    with storage.open_local(sha) as path:
        assert path == tmp_path / "root" / "objects" / sha[:2] / sha


def test_local_put_keeps_existing_object(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    artifact = storage.put_stream([b"stable"], max_bytes=MB)
    obj = tmp_path / "objects" / artifact.sha256[:2] / artifact.sha256
    inode = obj.stat().st_ino
    storage.put_stream([b"sta", b"ble"], max_bytes=MB)
    assert obj.stat().st_ino == inode  # not replaced


# --- storage_from_url ---


def test_from_url_file_and_plain_path(tmp_path: Path) -> None:
    by_url = storage_from_url(f"file://{tmp_path / 'a'}")
    assert isinstance(by_url, LocalStorage)
    assert by_url.root == tmp_path / "a"
    by_path = storage_from_url(str(tmp_path / "b"))
    assert isinstance(by_path, LocalStorage)
    assert by_path.root == tmp_path / "b"
    artifact = by_url.put_stream([b"via url"], max_bytes=MB)
    assert (tmp_path / "a" / "objects" / artifact.sha256[:2] / artifact.sha256).is_file()


def test_from_url_s3(s3_endpoint: str, tmp_path: Path) -> None:
    prefix = f"from-url-{uuid.uuid4().hex}"
    url = f"s3://{BUCKET}/{prefix}?endpoint_url={s3_endpoint}&region={REGION}"
    storage = storage_from_url(url, tmp_dir=tmp_path / "spool")
    assert isinstance(storage, S3Storage)
    assert (storage.bucket, storage.prefix) == (BUCKET, prefix + "/")
    data = b"uploaded through a URL-configured client"
    artifact = storage.put_stream([data], max_bytes=MB)
    body = _client(s3_endpoint).get_object(
        Bucket=BUCKET, Key=f"{prefix}/{artifact.sha256[:2]}/{artifact.sha256}"
    )["Body"]
    assert body.read() == data
    assert storage.fetch(artifact.sha256, tmp_path / "back").read_bytes() == data
    assert list((tmp_path / "spool").iterdir()) == []


def test_from_url_s3_without_prefix(tmp_path: Path) -> None:
    storage = storage_from_url("s3://bucket-only", tmp_dir=tmp_path)
    assert isinstance(storage, S3Storage)
    assert (storage.bucket, storage.prefix) == ("bucket-only", "")


@pytest.mark.parametrize(
    "url", ["s3:///no-bucket", "s3://b/p?colour=blue", "ftp://host/x", "file://remote/x"]
)
def test_from_url_rejects(url: str) -> None:
    with pytest.raises(ValueError, match="storage URL"):
        storage_from_url(url)
