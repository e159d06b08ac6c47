"""Content-addressed artifact storage: local filesystem or S3-compatible object storage.

Objects are keyed by the sha256 of their bytes, so API processes and workers on other
machines can share uploads without coordinating names; a put of known content is a no-op.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import tempfile
from collections.abc import AsyncIterable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol
from urllib.parse import parse_qs, unquote, urlsplit

from service.scratch import owner

_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_COPY_CHUNK = 1 << 20
_TMP_PREFIX = "shiftaudit-"


class StorageError(Exception):
    """A storage backend failed, or the object asked for is missing or corrupt."""


class TransientStorageError(StorageError):
    """The storage could not be reached or failed on its side: the same call may succeed later."""


class ArtifactTooLarge(StorageError):
    """The stream passed `limit` bytes; it was abandoned without reading the rest."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"artifact exceeds the limit of {limit} bytes")
        self.limit = limit


@dataclass(frozen=True)
class StoredArtifact:
    """A stored object: its hex sha256 (the key) and its size in bytes."""

    sha256: str
    size: int


class ArtifactStorage(Protocol):
    """What the service needs from a backend."""

    def put_stream(self, chunks: Iterable[bytes], *, max_bytes: int) -> StoredArtifact: ...

    async def put_async_stream(
        self, chunks: AsyncIterable[bytes], *, max_bytes: int
    ) -> StoredArtifact: ...

    def exists(self, sha256: str) -> bool: ...

    def size(self, sha256: str) -> int: ...

    def fetch(self, sha256: str, destination: Path) -> Path: ...

    def open_local(self, sha256: str) -> contextlib.AbstractContextManager[Path]: ...

    def delete(self, sha256: str) -> None: ...


class _Readable(Protocol):
    def read(self, size: int, /) -> bytes: ...


def _check_sha(sha256: str) -> str:
    # Checked before any path or key is built, so a caller cannot smuggle in "../".
    if not isinstance(sha256, str) or not _SHA256_RE.fullmatch(sha256):
        raise StorageError(f"invalid sha256 {sha256!r}: expected 64 lowercase hex digits")
    return sha256


def _fsync_dir(path: Path) -> None:
    # Makes a rename durable; some platforms cannot open directories, which is harmless.
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class _Spool:
    """A temp file that hashes and counts what is written and enforces the size limit."""

    def __init__(self, tmp_dir: Path, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError("max_bytes must be >= 0")
        # Named after this process, so that a restart after a crash can remove it.
        fd, name = tempfile.mkstemp(dir=tmp_dir, prefix=f"{_TMP_PREFIX}{owner()}-", suffix=".part")
        self.path = Path(name)
        self._file: BinaryIO = os.fdopen(fd, "wb")
        self._hash = hashlib.sha256()
        self._size = 0
        self._max = max_bytes

    def write(self, chunk: bytes) -> None:
        # Checked before writing, so an oversized stream stops at the first chunk past the limit.
        self._size += len(chunk)
        if self._size > self._max:
            raise ArtifactTooLarge(self._max)
        self._hash.update(chunk)
        self._file.write(chunk)

    def finish(self) -> StoredArtifact:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        return StoredArtifact(self._hash.hexdigest(), self._size)

    def discard(self) -> None:
        self._file.close()
        self.path.unlink(missing_ok=True)


def _copy_verified(source: _Readable, sha256: str, destination: Path) -> Path:
    """Copy to a sibling temp file while hashing, then rename over `destination`."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=destination.parent, prefix=f".{destination.name}.")
    tmp = Path(name)
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            while chunk := source.read(_COPY_CHUNK):
                digest.update(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        if (actual := digest.hexdigest()) != sha256:
            raise StorageError(f"object {sha256} is corrupt: its content hashes to {actual}")
        os.replace(tmp, destination)
    finally:
        tmp.unlink(missing_ok=True)
    return destination


class _SpoolingStorage:
    """put_stream / put_async_stream on top of a backend-specific `_commit`."""

    _tmp_dir: Path

    def _commit(self, tmp: Path, artifact: StoredArtifact) -> None:
        raise NotImplementedError

    def put_stream(self, chunks: Iterable[bytes], *, max_bytes: int) -> StoredArtifact:
        """Store a stream of chunks under its sha256; ArtifactTooLarge past `max_bytes`."""
        spool = _Spool(self._tmp_dir, max_bytes)
        try:
            for chunk in chunks:
                spool.write(chunk)
            artifact = spool.finish()
            self._commit(spool.path, artifact)
        finally:
            spool.discard()
        return artifact

    async def put_async_stream(
        self, chunks: AsyncIterable[bytes], *, max_bytes: int
    ) -> StoredArtifact:
        """Async twin of put_stream; file I/O and uploads run in worker threads."""
        spool = await asyncio.to_thread(_Spool, self._tmp_dir, max_bytes)
        try:
            async for chunk in chunks:
                await asyncio.to_thread(spool.write, chunk)
            artifact = await asyncio.to_thread(spool.finish)
            await asyncio.to_thread(self._commit, spool.path, artifact)
        finally:
            await asyncio.to_thread(spool.discard)
        return artifact


class LocalStorage(_SpoolingStorage):
    """Objects under root/objects/ab/<sha>; temp files under root/tmp (same filesystem)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._objects = self.root / "objects"
        self._tmp_dir = self.root / "tmp"
        self._objects.mkdir(parents=True, exist_ok=True)
        self._tmp_dir.mkdir(parents=True, exist_ok=True)

    @property
    def spool_dir(self) -> Path:
        """Where uploads are written before they land (named after their process)."""
        return self._tmp_dir

    def _path(self, sha256: str) -> Path:
        sha = _check_sha(sha256)
        return self._objects / sha[:2] / sha

    def _commit(self, tmp: Path, artifact: StoredArtifact) -> None:
        target = self._path(artifact.sha256)
        if target.is_file():
            return  # Same bytes already stored; the caller removes the temp file.
        target.parent.mkdir(exist_ok=True)
        os.replace(tmp, target)  # Atomic: readers see nothing or the whole object.
        _fsync_dir(target.parent)

    def exists(self, sha256: str) -> bool:
        return self._path(sha256).is_file()

    def size(self, sha256: str) -> int:
        try:
            return self._path(sha256).stat().st_size
        except FileNotFoundError:
            raise StorageError(f"object {sha256} not found in {self._objects}") from None

    def fetch(self, sha256: str, destination: Path) -> Path:
        try:
            with self._path(sha256).open("rb") as source:
                return _copy_verified(source, sha256, Path(destination))
        except FileNotFoundError:
            raise StorageError(f"object {sha256} not found in {self._objects}") from None

    @contextlib.contextmanager
    def open_local(self, sha256: str) -> Iterator[Path]:
        """The stored object itself: read it, never modify it."""
        path = self._path(sha256)
        if not path.is_file():
            raise StorageError(f"object {sha256} not found in {self._objects}")
        yield path

    def delete(self, sha256: str) -> None:
        self._path(sha256).unlink(missing_ok=True)


class S3Storage(_SpoolingStorage):
    """Objects at s3://bucket/{prefix}{sha[:2]}/{sha}; spooled through `tmp_dir`."""

    def __init__(
        self,
        *,
        bucket: str,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str | None = None,
        client: Any = None,
        tmp_dir: Path | None = None,
    ) -> None:
        # Imported here so the local backend works without boto3 installed.
        from botocore.exceptions import BotoCoreError, ClientError

        self._errors: tuple[type[Exception], ...] = (BotoCoreError, ClientError)
        if client is None:
            import boto3
            from botocore.config import Config

            # Path-style addressing: S3-compatible servers rarely resolve bucket subdomains.
            config = Config(s3={"addressing_style": "path"}) if endpoint_url else None
            client = boto3.client(
                "s3", endpoint_url=endpoint_url, region_name=region, config=config
            )
        self._client = client
        self.bucket = bucket
        self.prefix = prefix
        self._tmp_dir = Path(tmp_dir) if tmp_dir is not None else Path(tempfile.gettempdir())
        self._tmp_dir.mkdir(parents=True, exist_ok=True)

    def _key(self, sha256: str) -> str:
        sha = _check_sha(sha256)
        return f"{self.prefix}{sha[:2]}/{sha}"

    def _fail(self, action: str, key: str, exc: Exception) -> StorageError:
        error = TransientStorageError if _is_transient(exc) else StorageError
        return error(f"s3 {action} of s3://{self.bucket}/{key} failed: {exc}")

    def _head(self, sha256: str) -> dict[str, Any] | None:
        key = self._key(sha256)
        try:
            head: dict[str, Any] = self._client.head_object(Bucket=self.bucket, Key=key)
            return head
        except self._errors as exc:
            if _is_not_found(exc):
                return None
            raise self._fail("head", key, exc) from exc

    def _commit(self, tmp: Path, artifact: StoredArtifact) -> None:
        if self._head(artifact.sha256) is not None:
            return  # Content-addressed: the stored object already has these bytes.
        key = self._key(artifact.sha256)
        try:
            # upload_file switches to multipart for large files.
            self._client.upload_file(str(tmp), self.bucket, key)
        except self._errors as exc:
            raise self._fail("upload", key, exc) from exc

    def exists(self, sha256: str) -> bool:
        return self._head(sha256) is not None

    def size(self, sha256: str) -> int:
        head = self._head(sha256)
        if head is None:
            raise StorageError(f"object s3://{self.bucket}/{self._key(sha256)} not found")
        return int(head["ContentLength"])

    def fetch(self, sha256: str, destination: Path) -> Path:
        key = self._key(sha256)
        try:
            body = self._client.get_object(Bucket=self.bucket, Key=key)["Body"]
            try:
                return _copy_verified(body, sha256, Path(destination))
            finally:
                body.close()
        except self._errors as exc:
            if _is_not_found(exc):
                raise StorageError(f"object s3://{self.bucket}/{key} not found") from exc
            raise self._fail("download", key, exc) from exc

    @contextlib.contextmanager
    def open_local(self, sha256: str) -> Iterator[Path]:
        """A verified temp download, removed when the block exits."""
        _check_sha(sha256)
        prefix = f"{_TMP_PREFIX}{owner()}-"
        with tempfile.TemporaryDirectory(dir=self._tmp_dir, prefix=prefix) as tmp:
            yield self.fetch(sha256, Path(tmp) / sha256)

    def delete(self, sha256: str) -> None:
        key = self._key(sha256)
        try:
            self._client.delete_object(Bucket=self.bucket, Key=key)  # No error when absent.
        except self._errors as exc:
            raise self._fail("delete", key, exc) from exc


def _is_transient(exc: Exception) -> bool:
    """No answer (connection refused or cut, timeout, a truncated body), throttling or a 5xx
    answer; not a 4xx one (missing, denied) nor a client-side error such as no credentials."""
    from botocore.exceptions import ConnectionError, HTTPClientError, IncompleteReadError

    if isinstance(exc, ConnectionError | HTTPClientError | IncompleteReadError):
        return True
    response = getattr(exc, "response", None) or {}
    status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
    code = str(response.get("Error", {}).get("Code"))
    return status >= 500 or code in {"SlowDown", "Throttling", "RequestTimeout"}


def _is_not_found(exc: Exception) -> bool:
    error = getattr(exc, "response", {}).get("Error", {})
    return str(error.get("Code")) in {"404", "NoSuchKey", "NotFound"}


def storage_from_url(url: str, *, tmp_dir: Path | None = None) -> ArtifactStorage:
    """Build a backend from "file:///abs/path", a plain path, or
    "s3://bucket/prefix?endpoint_url=...&region=..." (credentials from the boto3 environment).

    `tmp_dir` only applies to S3: local temp files must share the objects' filesystem.
    """
    parts = urlsplit(url)
    if parts.scheme == "s3":
        if not parts.netloc:
            raise ValueError(f"storage URL {url!r} names no bucket")
        params = {name: values[-1] for name, values in parse_qs(parts.query).items()}
        unknown = set(params) - {"endpoint_url", "region"}
        if unknown:
            raise ValueError(f"storage URL {url!r}: unknown parameters {sorted(unknown)}")
        prefix = unquote(parts.path).lstrip("/")
        if prefix and not prefix.endswith("/"):
            prefix += "/"  # "s3://b/artifacts" means the artifacts/ folder.
        return S3Storage(
            bucket=parts.netloc,
            prefix=prefix,
            endpoint_url=params.get("endpoint_url"),
            region=params.get("region"),
            tmp_dir=tmp_dir,
        )
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise ValueError(f"storage URL {url!r}: remote file hosts are not supported")
        return LocalStorage(Path(unquote(parts.path)))
    if parts.scheme and len(parts.scheme) > 1:  # One letter: a Windows drive, i.e. a path.
        raise ValueError(f"unsupported storage URL scheme {parts.scheme!r} in {url!r}")
    return LocalStorage(Path(url))
