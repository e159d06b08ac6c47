"""Probe archives: reproducible packing, and bounded, validated extraction of untrusted ones.

Members are validated (no path escapes, no links or devices); extraction is bounded by the
member count and by what the archive expands to (bytes written, and the declared sizes of the
members it skips, which a compressed tar must still inflate to get past). A caller's
`check_member` looks at each member's first bytes before the rest is written, and bounds what
that member may hold: a bomb is refused after a few KiB, not after filling the disk.
Standard library only, so that a client can pack a directory without the engine's
dependencies.
"""

from __future__ import annotations

import re
import stat
import tarfile
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path, PurePosixPath
from typing import IO

from shiftaudit.errors import ProbeSetError

__all__ = [
    "MemberCheck",
    "MemberLimit",
    "archive_kind",
    "extract_archive",
    "is_ignored",
    "pack_directory",
    "pack_tar",
]

_CHUNK = 1 << 20
_DRIVE = re.compile(r"^[A-Za-z]:")
# A member's first bytes handed to `check_member`; doubled while it asks for more, up to the
# most (a JPEG's metadata segments come before its size).
HEAD_BYTES = 64 << 10
MAX_HEAD_BYTES = 4 << 20


@dataclass(frozen=True)
class MemberLimit:
    """The most bytes one member may hold, and the sentence that refuses it beyond."""

    max_bytes: int
    refusal: str


# (member name, its first bytes, whether they are all of it) -> its limit; None: more bytes
# are needed to tell; raises ProbeSetError to refuse the member from these bytes alone.
MemberCheck = Callable[[str, bytes, bool], MemberLimit | None]


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

    def __init__(
        self,
        archive: Path,
        dest: Path,
        *,
        max_members: int,
        max_bytes: int,
        check_member: MemberCheck | None,
    ) -> None:
        self.archive = archive
        self.dest = dest.resolve()
        self.max_members = max_members
        self.max_bytes = max_bytes
        self.check_member = check_member
        self.expanded = 0  # bytes written, and declared bytes of members skipped
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
                self._add(
                    info.filename, refused, info.is_dir(), info.file_size, partial(zf.open, info)
                )

    def _tar(self) -> None:
        # Stream mode: one sequential pass, so a compressed bomb is never scanned twice.
        with tarfile.open(self.archive, mode="r|*") as tf:
            for m in tf:
                refused = None
                if m.issym() or m.islnk():
                    refused = "symbolic link" if m.issym() else "hard link"
                elif not (m.isreg() or m.isdir()):
                    refused = "device, fifo or other special file"
                self._add(m.name, refused, m.isdir(), m.size, partial(tf.extractfile, m))

    def _add(
        self,
        name: str,
        refused: str | None,
        is_dir: bool,
        declared: int,
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
            # Not written, but a tar stream inflates it all the same to reach the next one.
            self._expand(declared, name)
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
        with src:
            head, limit = self._head(name, src)
            with target.open("xb") as dst:  # "x": a duplicate member fails, never overwrites
                held = 0
                chunk = head
                while chunk:
                    held += len(chunk)
                    if limit is not None and held > limit.max_bytes:
                        raise ProbeSetError(f"{self.archive}: {limit.refusal}")
                    self._expand(len(chunk), name)
                    dst.write(chunk)
                    chunk = src.read(_CHUNK)

    def _head(self, name: str, src: IO[bytes]) -> tuple[bytes, MemberLimit | None]:
        """The member's first bytes and its limit, from `check_member` (nothing is written
        before it has seen them)."""
        head = _read_up_to(src, HEAD_BYTES)
        if self.check_member is None:
            return head, None
        complete = len(head) < HEAD_BYTES
        while (limit := self._checked(name, head, complete)) is None:
            if complete or len(head) >= MAX_HEAD_BYTES:
                raise ProbeSetError(
                    f"{self.archive}: member {name!r}: its first {len(head)} bytes do not say "
                    "what it is"
                )
            more = _read_up_to(src, len(head))
            complete = len(more) < len(head)
            head += more
        return head, limit

    def _checked(self, name: str, head: bytes, complete: bool) -> MemberLimit | None:
        assert self.check_member is not None
        try:
            return self.check_member(name, head, complete)
        except ProbeSetError as refused:
            raise ProbeSetError(f"{self.archive}: {refused}") from None

    def _expand(self, size: int, name: str) -> None:
        self.expanded += size
        if self.expanded > self.max_bytes:
            raise ProbeSetError(
                f"{self.archive}: the archive expands past max_extracted_bytes={self.max_bytes} "
                f"(at member {name!r})"
            )


def _read_up_to(src: IO[bytes], size: int) -> bytes:
    """`size` bytes, fewer only at the end of the member (a decompressor may return less)."""
    data = bytearray()
    while len(data) < size:
        piece = src.read(size - len(data))
        if not piece:
            break
        data += piece
    return bytes(data)


def extract_archive(
    archive: Path,
    dest: Path,
    *,
    kind: str,
    max_members: int,
    max_bytes: int,
    check_member: MemberCheck | None = None,
) -> None:
    """Extract a zip or tar archive under `dest`, refusing unsafe members and stopping as soon
    as more than `max_members` members or `max_bytes` expanded bytes are reached, or a member
    fails `check_member` (from its first bytes) or outgrows the limit that check gave it."""
    _Extractor(
        archive, dest, max_members=max_members, max_bytes=max_bytes, check_member=check_member
    ).extract(kind)
