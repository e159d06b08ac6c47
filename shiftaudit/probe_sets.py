"""Probe sets: a directory, zip or tar(.gz) of PNG/JPEG/WebP images, with optional labels.

Archives are untrusted input: they are extracted with the bounds of `shiftaudit.archives`,
each member's header checked (format and pixel limit, from its first bytes) before the rest
of it is written, and every image header is checked again before anything is decoded.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import weakref
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from types import TracebackType

import numpy as np
import numpy.typing as npt

from shiftaudit.archives import MemberCheck, MemberLimit, archive_kind, extract_archive, is_ignored
from shiftaudit.errors import ProbeSetError
from shiftaudit.images import NotAnImage, check_header, declared_size, decode_image
from shiftaudit.labels import LABELS_FILE, labels_of

__all__ = ["Probe", "ProbeLimits", "ProbeSet", "open_probe_set"]


@dataclass(frozen=True)
class ProbeLimits:
    """Resource limits applied while opening a probe set."""

    max_archive_bytes: int = 2 * 1024**3
    max_extracted_bytes: int = 4 * 1024**3
    max_files: int = 100_000
    max_image_pixels: int = 80_000_000
    max_labels_bytes: int = 256 * 100_000  # a line of up to 256 bytes for each of max_files


# What an image file may hold beyond its declared pixels: the raw size of 16-bit RGBA (a PNG
# stored without compression comes close) plus room for metadata (EXIF, ICC, XMP).
BYTES_PER_PIXEL = 8
METADATA_BYTES = 1 << 20


@dataclass(frozen=True)
class Probe:
    """One image: its '/'-separated path relative to the probe-set root, and its class."""

    name: str
    label: int | None


class ProbeSet:
    """An opened probe set; use as a context manager so temporary files are removed.

    ``sha256`` identifies the content. For an archive it is the sha256 of the archive bytes.
    For a directory it is the sha256 of a UTF-8 manifest with one line per image (and
    ``labels.csv`` if present), ``"<relpath>\\t<sha256 of the file>\\n"``, sorted by relpath.
    """

    def __init__(
        self,
        *,
        source: Path,
        root: Path,
        sha256: str,
        probes: list[Probe],
        limits: ProbeLimits = ProbeLimits(),
        tmp: Path | None = None,
    ) -> None:
        self.source = source
        self.root = root
        self.sha256 = sha256
        self.probes = probes
        self.has_labels = any(p.label is not None for p in probes)
        self._limits = limits
        self._closed = False
        # The finalizer removes the extraction directory even if close() is never called.
        self._cleanup = weakref.finalize(self, _remove_tree, tmp)

    def __len__(self) -> int:
        return len(self.probes)

    def load_image(self, index: int) -> npt.NDArray[np.uint8]:
        """Decode probe ``index`` to a contiguous (H, W, 3) uint8 RGB array."""
        name = self.probes[index].name
        if self._closed:
            raise ProbeSetError(f"{name}: probe set {self.source} is closed")
        return decode_image(self.root / name, name, max_pixels=self._limits.max_image_pixels)

    def label_summary(self) -> dict[int, int]:
        """Return label -> number of probes, sorted by label (empty if unlabeled)."""
        counts = Counter(p.label for p in self.probes if p.label is not None)
        return dict(sorted(counts.items()))

    def verify(self) -> None:
        """Fully decode every image; raise ProbeSetError naming the first bad one."""
        for i in range(len(self.probes)):
            self.load_image(i)

    def close(self) -> None:
        """Remove the temporary extraction directory, if any."""
        self._closed = True
        self._cleanup()

    def __enter__(self) -> ProbeSet:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def open_probe_set(
    path: str | Path,
    *,
    class_names: Sequence[str] | None = None,
    limits: ProbeLimits = ProbeLimits(),
    tmp_dir: str | Path | None = None,
    verify: bool = False,
) -> ProbeSet:
    """Open a directory, zip or tar(.gz) of PNG/JPEG/WebP images, with optional labels.

    Labels come from ``labels.csv`` (``filename,label``) at the root, else from one
    first-level folder per class, else the set is unlabeled. A label is an integer class
    index or a name looked up in ``class_names``. Archives are extracted into a fresh
    temporary directory under ``tmp_dir``, removed by ``close()`` or on any error. An archive
    holding a single top-level folder uses that folder as the root (so a one-class archive
    needs labels.csv). ``verify=True`` also decodes every image before returning.
    """
    source = Path(path)
    if source.is_dir():
        root = source
        files, labels_csv = _scan(root, source, limits)
        sha = _manifest_sha256(root, files, labels_csv)
        probes = _build_probes(root, files, labels_csv, class_names, limits)
        probe_set = ProbeSet(source=source, root=root, sha256=sha, probes=probes, limits=limits)
    elif source.is_file():
        probe_set = _open_archive(source, class_names, limits, tmp_dir)
    else:
        raise ProbeSetError(f"{source}: no such file or directory")
    if verify:
        try:
            probe_set.verify()
        except BaseException:
            probe_set.close()
            raise
    return probe_set


def _open_archive(
    source: Path,
    class_names: Sequence[str] | None,
    limits: ProbeLimits,
    tmp_dir: str | Path | None,
) -> ProbeSet:
    size = source.stat().st_size
    if size > limits.max_archive_bytes:
        raise ProbeSetError(
            f"{source}: archive is {size} bytes, over max_archive_bytes={limits.max_archive_bytes}"
        )
    kind = archive_kind(source)
    if kind is None:
        raise ProbeSetError(f"{source}: not a directory, zip or tar archive")
    with source.open("rb") as f:
        sha = hashlib.file_digest(f, "sha256").hexdigest()
    try:
        tmp = Path(tempfile.mkdtemp(prefix="shiftaudit-probes-", dir=tmp_dir))
    except OSError as e:
        raise ProbeSetError(f"cannot create a temporary directory in {tmp_dir}: {e}") from e
    try:
        extract_archive(
            source,
            tmp,
            kind=kind,
            max_members=limits.max_files,
            max_bytes=limits.max_extracted_bytes,
            check_member=member_check(limits),
        )
        entries = list(tmp.iterdir())
        # A "zip of a folder": that folder is the real root.
        root = entries[0] if len(entries) == 1 and entries[0].is_dir() else tmp
        files, labels_csv = _scan(root, source, limits)
        probes = _build_probes(root, files, labels_csv, class_names, limits)
        return ProbeSet(source=source, root=root, sha256=sha, probes=probes, limits=limits, tmp=tmp)
    except BaseException:
        _remove_tree(tmp)
        raise


def member_check(limits: ProbeLimits) -> MemberCheck:
    """How extraction judges a member from its first bytes: `labels.csv` (at the root or in
    a single top folder) may hold `max_labels_bytes`; anything else must begin a PNG, JPEG or
    WebP header within the pixel limit, and holds at most what such an image can."""

    def check(name: str, head: bytes, complete: bool) -> MemberLimit | None:
        parts = PurePosixPath(name).parts
        if parts and parts[-1] == LABELS_FILE and len(parts) <= 2:
            cap = limits.max_labels_bytes
            return MemberLimit(cap, f"{name!r} is larger than {cap} bytes, too large for labels")
        try:
            found = declared_size(head, complete=complete)
        except NotAnImage as error:
            raise ProbeSetError(f"{name!r} is not a PNG, JPEG or WebP image: {error}") from None
        if found is None:
            return None
        kind, width, height = found
        if width * height > limits.max_image_pixels:
            raise ProbeSetError(
                f"{name!r}: {width}x{height} image exceeds "
                f"max_image_pixels={limits.max_image_pixels}"
            )
        most = width * height * BYTES_PER_PIXEL + METADATA_BYTES + len(head)
        return MemberLimit(
            most, f"{name!r} holds more than {most} bytes, more than a {width}x{height} {kind} can"
        )

    return check


def _remove_tree(path: Path | None) -> None:
    if path is not None:
        shutil.rmtree(path, ignore_errors=True)


def _scan(root: Path, source: Path, limits: ProbeLimits) -> tuple[list[str], bool]:
    """Return sorted candidate image paths relative to ``root`` and whether labels.csv exists."""

    def fail(e: OSError) -> None:
        raise ProbeSetError(f"{e.filename}: cannot list directory: {e}") from e

    files: list[str] = []
    labels_csv = False
    for dirpath, dirnames, filenames in os.walk(root, onerror=fail):
        rel_dir = PurePosixPath(Path(dirpath).relative_to(root).as_posix())
        for d in list(dirnames):
            parts = (rel_dir / d).parts
            if is_ignored(parts):
                dirnames.remove(d)
            elif os.path.islink(os.path.join(dirpath, d)):
                raise ProbeSetError(f"{rel_dir / d}: symbolic link to a directory, not followed")
        for f in filenames:
            rel = rel_dir / f
            if is_ignored(rel.parts):
                continue
            if not os.path.isfile(os.path.join(dirpath, f)):
                raise ProbeSetError(f"{rel}: not a regular file")
            if str(rel) == LABELS_FILE:
                labels_csv = True
                continue
            files.append(str(rel))
            if len(files) > limits.max_files:
                raise ProbeSetError(f"{source}: more than max_files={limits.max_files} images")
    if not files:
        raise ProbeSetError(f"{source}: the probe set contains no images")
    return sorted(files), labels_csv


def _manifest_sha256(root: Path, files: list[str], labels_csv: bool) -> str:
    names = sorted([*files, LABELS_FILE] if labels_csv else files)
    manifest = hashlib.sha256()
    for name in names:
        with (root / name).open("rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
        manifest.update(f"{name}\t{digest}\n".encode())
    return manifest.hexdigest()


def _build_probes(
    root: Path,
    files: list[str],
    labels_csv: bool,
    class_names: Sequence[str] | None,
    limits: ProbeLimits,
) -> list[Probe]:
    for name in files:
        check_header(root / name, name, max_pixels=limits.max_image_pixels)
    labels = labels_of(root, files, labels_csv, class_names)
    return [Probe(name, label) for name, label in zip(files, labels, strict=True)]
