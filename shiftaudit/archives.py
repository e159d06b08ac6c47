"""Probe archives: reproducible packing, and bounded, validated extraction of untrusted ones.

Members are validated (no path escapes, no links or devices); extraction is bounded by the
bytes actually written and by the member count. Standard library only, so that a client can
pack a directory without the engine's dependencies.
"""

from __future__ import annotations

import re
import stat
import tarfile
import zipfile
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path, PurePosixPath
from typing import IO

from shiftaudit.errors import ProbeSetError

__all__ = ["archive_kind", "extract_archive", "is_ignored", "pack_directory", "pack_tar"]

_CHUNK = 1 << 20
_DRIVE = re.compile(r"^[A-Za-z]:")


def pack_tar(members: Mapping[str, Path], destination: Path) -> Path:
    """A reproducible tar of `members` (member name -> file): sorted names and fixed
    metadata, so the same files always give the same bytes and sha256.

    USTAR, whose names hold at most 100 bytes (255 with a directory prefix); an archive with
    a longer name (a long or non-ASCII file name) is written in POSIX.1-2001 (pax) format
    instead, which stores it in an extended header. The choice depends on the names only.
    """
    infos = []
    for name in sorted(members):
        info = tarfile.TarInfo(name)
        info.size = members[name].stat().st_size
        info.mode = 0o644
        infos.append(info)
    layout = tarfile.USTAR_FORMAT if all(_fits_ustar(i) for i in infos) else tarfile.PAX_FORMAT
    with tarfile.open(destination, "w", format=layout) as bundle:
        for info in infos:
            with members[info.name].open("rb") as handle:
                bundle.addfile(info, handle)
    return destination


def _fits_ustar(info: tarfile.TarInfo) -> bool:
    try:
        info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape")
    except ValueError:
        return False
    return True


def pack_directory(root: Path, destination: Path) -> Path:
    """A probe directory (images, class sub-folders, labels.csv) as a reproducible tar;
    hidden files are left out, as when the directory is audited directly."""
    if not root.is_dir():
        raise ProbeSetError(f"{root}: not a directory")
    members = {
        path.relative_to(root).as_posix(): path
        for path in root.rglob("*")
        if path.is_file() and not is_ignored(path.relative_to(root).parts)
    }
    if not members:
        raise ProbeSetError(f"{root}: no files to pack")
    return pack_tar(members, destination)


def archive_kind(path: Path) -> str | None:
    with path.open("rb") as f:
        head = f.read(4)
    if head[:2] == b"\x1f\x8b":
        return "tar"
    # Magic first: is_zipfile alone also says yes for a tar whose last member is a zip.
    if head in (b"PK\x03\x04", b"PK\x05\x06"):
        return "zip"
    if tarfile.is_tarfile(path):
        return "tar"
    if zipfile.is_zipfile(path):
        return "zip"
    return None


def _member_parts(name: str, archive: Path) -> tuple[str, ...]:
    """Validate an archive member name and return its path components."""
    if "\\" in name or "\x00" in name or name.startswith("/") or _DRIVE.match(name):
        raise ProbeSetError(f"{archive}: unsafe member path {name!r} refused")
    parts = tuple(p for p in PurePosixPath(name).parts if p != ".")
    if ".." in parts:
        raise ProbeSetError(f"{archive}: unsafe member path {name!r} refused")
    return parts


def is_ignored(parts: Sequence[str]) -> bool:
    return bool(parts) and (parts[0] == "__MACOSX" or any(p.startswith(".") for p in parts))


class _Extractor:
    """Writes validated members under ``dest``, counting bytes as they are written."""

    def __init__(self, archive: Path, dest: Path, *, max_members: int, max_bytes: int) -> None:
        self.archive = archive
        self.dest = dest.resolve()
        self.max_members = max_members
        self.max_bytes = max_bytes
        self.written = 0
        self.members = 0
        self.current = "<none>"

    def extract(self, kind: str) -> None:
        try:
            if kind == "zip":
                self._zip()
            else:
                self._tar()
        except ProbeSetError:
            raise
        except Exception as e:  # zipfile/tarfile/zlib/lzma raise many types on bad input
            msg = f"{self.archive}: cannot extract member {self.current!r}: {e}"
            raise ProbeSetError(msg) from e

    def _zip(self) -> None:
        with zipfile.ZipFile(self.archive) as zf:
            for info in zf.infolist():
                kind = stat.S_IFMT(info.external_attr >> 16)
                refused = None
                if kind == stat.S_IFLNK:
                    refused = "symbolic link"
                elif kind not in (0, stat.S_IFREG, stat.S_IFDIR):
                    refused = "special file"
                self._add(info.filename, refused, info.is_dir(), partial(zf.open, info))

    def _tar(self) -> None:
        # Stream mode: one sequential pass, so a compressed bomb is never scanned twice.
        with tarfile.open(self.archive, mode="r|*") as tf:
            for m in tf:
                refused = None
                if m.issym() or m.islnk():
                    refused = "symbolic link" if m.issym() else "hard link"
                elif not (m.isreg() or m.isdir()):
                    refused = "device, fifo or other special file"
                self._add(m.name, refused, m.isdir(), partial(tf.extractfile, m))

    def _add(
        self,
        name: str,
        refused: str | None,
        is_dir: bool,
        data: Callable[[], IO[bytes] | None],
    ) -> None:
        self.current = name
        self.members += 1
        if self.members > self.max_members:
            raise ProbeSetError(f"{self.archive}: more than max_files={self.max_members}")
        parts = _member_parts(name, self.archive)
        if refused is not None:
            raise ProbeSetError(f"{self.archive}: member {name!r} is a {refused}, refused")
        if not parts or is_ignored(parts):
            return
        target = self.dest.joinpath(*parts)
        if not target.resolve().is_relative_to(self.dest):  # defence in depth
            raise ProbeSetError(f"{self.archive}: unsafe member path {name!r} refused")
        if is_dir:
            target.mkdir(parents=True, exist_ok=True)
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        src = data()
        if src is None:
            raise ProbeSetError(f"{self.archive}: member {name!r} has no data")
        with src, target.open("xb") as dst:  # "x": a duplicate member fails, never overwrites
            while chunk := src.read(_CHUNK):
                self.written += len(chunk)
                if self.written > self.max_bytes:
                    raise ProbeSetError(
                        f"{self.archive}: extracting {name!r} exceeds "
                        f"max_extracted_bytes={self.max_bytes}"
                    )
                dst.write(chunk)


def extract_archive(
    archive: Path, dest: Path, *, kind: str, max_members: int, max_bytes: int
) -> None:
    """Extract a zip or tar archive under `dest`, refusing unsafe members and stopping as soon
    as more than `max_members` members or `max_bytes` written bytes are reached."""
    _Extractor(archive, dest, max_members=max_members, max_bytes=max_bytes).extract(kind)
