"""Safe loading of probe image sets from a directory, a zip or a tar(.gz) archive.

Archives are untrusted input: members are validated (no path escapes, no links or devices),
extraction is bounded by bytes actually written and by member count, and every image header
is checked against a pixel limit before anything is decoded.
"""

from __future__ import annotations

import csv
import hashlib
import os
import re
import shutil
import stat
import tarfile
import tempfile
import warnings
import weakref
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import IO

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageFile, ImageOps

from shiftaudit.errors import ProbeSetError

__all__ = ["Probe", "ProbeLimits", "ProbeSet", "open_probe_set", "pack_directory", "pack_tar"]

# MPO is how Pillow reports JPEGs carrying multi-picture data (common from phone cameras).
_FORMATS = ("PNG", "JPEG", "WEBP")
_ACCEPTED_FORMATS = frozenset({*_FORMATS, "MPO"})
_LABELS_FILE = "labels.csv"
_CHUNK = 1 << 20
_DRIVE = re.compile(r"^[A-Za-z]:")
_MAX_LISTED = 5


@dataclass(frozen=True)
class ProbeLimits:
    """Resource limits applied while opening a probe set."""

    max_archive_bytes: int = 2 * 1024**3
    max_extracted_bytes: int = 4 * 1024**3
    max_files: int = 100_000
    max_image_pixels: int = 80_000_000


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
        return _decode(self.root / name, name, self._limits)

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
    kind = _archive_kind(source)
    if kind is None:
        raise ProbeSetError(f"{source}: not a directory, zip or tar archive")
    with source.open("rb") as f:
        sha = hashlib.file_digest(f, "sha256").hexdigest()
    try:
        tmp = Path(tempfile.mkdtemp(prefix="shiftaudit-probes-", dir=tmp_dir))
    except OSError as e:
        raise ProbeSetError(f"cannot create a temporary directory in {tmp_dir}: {e}") from e
    try:
        _Extractor(source, tmp, limits).extract(kind)
        entries = list(tmp.iterdir())
        # A "zip of a folder": that folder is the real root.
        root = entries[0] if len(entries) == 1 and entries[0].is_dir() else tmp
        files, labels_csv = _scan(root, source, limits)
        probes = _build_probes(root, files, labels_csv, class_names, limits)
        return ProbeSet(source=source, root=root, sha256=sha, probes=probes, limits=limits, tmp=tmp)
    except BaseException:
        _remove_tree(tmp)
        raise


def pack_tar(members: Mapping[str, Path], destination: Path) -> Path:
    """A reproducible tar of `members` (member name -> file): sorted names and fixed
    metadata, so the same files always give the same bytes and sha256."""
    with tarfile.open(destination, "w", format=tarfile.USTAR_FORMAT) as bundle:
        for name in sorted(members):
            info = tarfile.TarInfo(name)
            info.size = members[name].stat().st_size
            info.mode = 0o644
            with members[name].open("rb") as handle:
                bundle.addfile(info, handle)
    return destination


def pack_directory(root: Path, destination: Path) -> Path:
    """A probe directory (images, class sub-folders, labels.csv) as a reproducible tar;
    hidden files are left out, as when the directory is audited directly."""
    if not root.is_dir():
        raise ProbeSetError(f"{root}: not a directory")
    members = {
        path.relative_to(root).as_posix(): path
        for path in root.rglob("*")
        if path.is_file() and not _ignored(path.relative_to(root).parts)
    }
    if not members:
        raise ProbeSetError(f"{root}: no files to pack")
    return pack_tar(members, destination)


def _remove_tree(path: Path | None) -> None:
    if path is not None:
        shutil.rmtree(path, ignore_errors=True)


def _archive_kind(path: Path) -> str | None:
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


def _ignored(parts: Sequence[str]) -> bool:
    return bool(parts) and (parts[0] == "__MACOSX" or any(p.startswith(".") for p in parts))


class _Extractor:
    """Writes validated members under ``dest``, counting bytes as they are written."""

    def __init__(self, archive: Path, dest: Path, limits: ProbeLimits) -> None:
        self.archive = archive
        self.dest = dest.resolve()
        self.limits = limits
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
        if self.members > self.limits.max_files:
            raise ProbeSetError(f"{self.archive}: more than max_files={self.limits.max_files}")
        parts = _member_parts(name, self.archive)
        if refused is not None:
            raise ProbeSetError(f"{self.archive}: member {name!r} is a {refused}, refused")
        if not parts or _ignored(parts):
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
                if self.written > self.limits.max_extracted_bytes:
                    raise ProbeSetError(
                        f"{self.archive}: extracting {name!r} exceeds "
                        f"max_extracted_bytes={self.limits.max_extracted_bytes}"
                    )
                dst.write(chunk)


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
            if _ignored(parts):
                dirnames.remove(d)
            elif os.path.islink(os.path.join(dirpath, d)):
                raise ProbeSetError(f"{rel_dir / d}: symbolic link to a directory, not followed")
        for f in filenames:
            rel = rel_dir / f
            if _ignored(rel.parts):
                continue
            if not os.path.isfile(os.path.join(dirpath, f)):
                raise ProbeSetError(f"{rel}: not a regular file")
            if str(rel) == _LABELS_FILE:
                labels_csv = True
                continue
            files.append(str(rel))
            if len(files) > limits.max_files:
                raise ProbeSetError(f"{source}: more than max_files={limits.max_files} images")
    if not files:
        raise ProbeSetError(f"{source}: the probe set contains no images")
    return sorted(files), labels_csv


def _manifest_sha256(root: Path, files: list[str], labels_csv: bool) -> str:
    names = sorted([*files, _LABELS_FILE] if labels_csv else files)
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
        _check_header(root / name, name, limits)
    if labels_csv:
        labels = _read_labels_csv(root / _LABELS_FILE, files, class_names)
        return [Probe(name, labels[name]) for name in files]
    at_root = [n for n in files if "/" not in n]
    if len(at_root) == len(files):
        return [Probe(name, None) for name in files]
    if at_root:
        raise ProbeSetError(
            f"images at the root mixed with class folders: {_some(at_root)}; "
            "put every image in a class folder or add labels.csv"
        )
    folders = sorted({n.split("/", 1)[0] for n in files})  # sorted: deterministic errors
    folder_label = {f: _resolve_label(f, class_names, f"class folder {f!r}") for f in folders}
    return [Probe(name, folder_label[name.split("/", 1)[0]]) for name in files]


def _some(names: Sequence[str]) -> str:
    shown = ", ".join(names[:_MAX_LISTED])
    more = len(names) - _MAX_LISTED
    return shown + (f" (and {more} more)" if more > 0 else "")


def _resolve_label(value: str, class_names: Sequence[str] | None, what: str) -> int:
    """An integer is always a class index; anything else is looked up in ``class_names``."""
    value = value.strip()
    if re.fullmatch(r"[0-9]+", value):
        index = int(value)
        if class_names is not None and index >= len(class_names):
            raise ProbeSetError(
                f"{what}: class index {index} out of range for {len(class_names)} class_names"
            )
        return index
    if class_names is None:
        raise ProbeSetError(
            f"{what}: {value!r} is not an integer class index; class_names is needed"
        )
    try:
        return list(class_names).index(value)
    except ValueError:
        raise ProbeSetError(f"{what}: class_names does not contain {value!r}") from None


def _read_labels_csv(
    path: Path, files: list[str], class_names: Sequence[str] | None
) -> dict[str, int]:
    labels: dict[str, int] = {}
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise ProbeSetError(f"{_LABELS_FILE}: cannot read: {e}") from e
    if not rows or [c.strip() for c in rows[0]] != ["filename", "label"]:
        raise ProbeSetError(f"{_LABELS_FILE}: header must be 'filename,label'")
    for line, row in enumerate(rows[1:], start=2):
        if not any(c.strip() for c in row):
            continue
        if len(row) != 2:
            raise ProbeSetError(f"{_LABELS_FILE} line {line}: expected 2 columns, got {len(row)}")
        name = row[0].strip().removeprefix("./")
        if name in labels:
            raise ProbeSetError(f"{_LABELS_FILE} line {line}: duplicate row for {name!r}")
        labels[name] = _resolve_label(row[1], class_names, f"{_LABELS_FILE} line {line}")
    missing = sorted(set(labels) - set(files))
    if missing:
        raise ProbeSetError(f"{_LABELS_FILE} lists images that do not exist: {_some(missing)}")
    unlisted = [n for n in files if n not in labels]
    if unlisted:
        raise ProbeSetError(f"images not listed in {_LABELS_FILE}: {_some(unlisted)}")
    return labels


@contextmanager
def _opened(path: Path, name: str, limits: ProbeLimits) -> Iterator[Image.Image]:
    """Open an image and check format and size from its header; nothing is decoded yet."""
    try:
        # Pillow's own bomb check only warns below 2 * MAX_IMAGE_PIXELS; make it an error.
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path, formats=_FORMATS) as im:
                if im.format not in _ACCEPTED_FORMATS:
                    raise ProbeSetError(f"{name}: format {im.format} is not PNG, JPEG or WebP")
                width, height = im.size
                if width * height > limits.max_image_pixels:
                    raise ProbeSetError(
                        f"{name}: {width}x{height} image exceeds "
                        f"max_image_pixels={limits.max_image_pixels}"
                    )
                yield im
    except ProbeSetError:
        raise
    except Exception as e:  # decoders of untrusted bytes raise OSError, SyntaxError, ...
        raise ProbeSetError(f"{name}: not a readable PNG, JPEG or WebP image: {e}") from e


def _check_header(path: Path, name: str, limits: ProbeLimits) -> None:
    with _opened(path, name, limits):
        pass


def _decode(path: Path, name: str, limits: ProbeLimits) -> npt.NDArray[np.uint8]:
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        # Truncated files would be silently padded instead of refused.
        raise ProbeSetError(f"{name}: refusing to decode while PIL LOAD_TRUNCATED_IMAGES is set")
    with _opened(path, name, limits) as im:  # rechecked: the file may have changed
        im.load()
        return _to_rgb(ImageOps.exif_transpose(im))


def _to_rgb(im: Image.Image) -> npt.NDArray[np.uint8]:
    """Convert any Pillow mode to contiguous (H, W, 3) uint8 RGB; alpha goes over black."""
    mode = im.mode
    if mode.startswith("I"):
        # 16-bit grayscale (PNG gives I;16): scale to 8 bits rather than clip, 65535 -> 255.
        wide = np.clip(np.asarray(im).astype(np.int64), 0, 65535)
        gray = ((wide + 128) // 257).astype(np.uint8)
    elif mode == "F":
        # No PNG/JPEG/WebP decodes to F; follow Pillow's convert("L"): clip to 0..255.
        gray = np.clip(np.rint(np.asarray(im)), 0, 255).astype(np.uint8)
    elif mode in ("RGBA", "RGBa", "LA", "La", "PA") or "transparency" in im.info:
        # Pillow 13 already reduces 16-bit RGB(A) PNGs to 8-bit RGB(A) (keeping the high
        # byte), so they arrive here or below as 8-bit modes.
        rgba = np.asarray(im.convert("RGBA"), dtype=np.uint16)
        rgb = (rgba[..., :3] * rgba[..., 3:] + 127) // 255
        return np.ascontiguousarray(rgb, dtype=np.uint8)
    elif mode in ("1", "L"):
        gray = np.asarray(im.convert("L"), dtype=np.uint8)
    else:
        return np.ascontiguousarray(np.asarray(im.convert("RGB"), dtype=np.uint8))
    return np.ascontiguousarray(np.repeat(gray[..., None], 3, axis=2))
