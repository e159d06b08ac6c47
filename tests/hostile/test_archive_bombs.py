"""Decompression amplification against a live `shiftaudit serve` (issue 13, item 7).

Before the fix a small archive was extracted up to the expansion limit before anything
looked at its members: a 4 MB zip bomb wrote 4 GiB before the 422. Now each member's first
bytes must be a PNG, JPEG or WebP header whose size is within the pixel limit before the
rest is written, a member may hold no more than its header's image can, the whole archive
expands to at most MAX_PROBE_SET_EXPANDED_BYTES, and archive checks run a bounded number at
a time. A sampler measures, while each upload runs, how much the server has written to its
scratch space.
"""

from __future__ import annotations

import io
import struct
import tarfile
import threading
import time
import zipfile
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.nets import noise_probes, zip_directory

from .live import LiveServer

EXPANDS_TO = 256 << 20  # every bomb below unpacks to at least this
SCRATCH_PEAK = 8 << 20  # more written to scratch than this and the bomb went off
ZEROS = b"\0" * (1 << 20)


def _png_header(width: int, height: int) -> bytes:
    """A PNG signature and IHDR chunk declaring `width` x `height` 8-bit RGB."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return (
        b"\x89PNG\r\n\x1a\n"
        + struct.pack(">I", len(ihdr))
        + chunk
        + struct.pack(">I", zlib.crc32(chunk))
    )


def _tiny_png() -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (1, 1), (200, 10, 10)).save(out, format="PNG")
    return out.getvalue()


class _Zeros(io.RawIOBase):
    """`size` zero bytes, read like a file (so that no bomb is ever held in memory)."""

    def __init__(self, size: int) -> None:
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        count = min(len(buffer), self.left)
        buffer[:count] = b"\0" * count
        self.left -= count
        return count


def _zip(path: Path, members: list[tuple[str, bytes, int]]) -> Path:
    """Each member: its name, its first bytes, then that many zeros."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as bundle:
        for name, head, zeros in members:
            with bundle.open(name, "w", force_zip64=True) as member:
                member.write(head)
                for _ in range(zeros >> 20):
                    member.write(ZEROS)
    return path


def _tgz(path: Path, members: list[tuple[str, bytes, int]]) -> Path:
    with tarfile.open(path, "w:gz", compresslevel=1) as bundle:
        for name, head, zeros in members:
            info = tarfile.TarInfo(name)
            info.size = len(head) + zeros
            bundle.addfile(info, io.BufferedReader(_Chain(head, _Zeros(zeros))))
    return path


class _Chain(io.RawIOBase):
    def __init__(self, head: bytes, rest: io.RawIOBase) -> None:
        self.head, self.rest = head, rest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self.head:
            count = min(len(buffer), len(self.head))
            buffer[:count] = self.head[:count]
            self.head = self.head[count:]
            return count
        return self.rest.readinto(buffer)


BOMBS = {
    # name: (builder, members, what the 422 must say)
    "zip of zeros": (
        _zip,
        [("bomb.png", b"", EXPANDS_TO)],
        "'bomb.png' is not a PNG, JPEG or WebP image",
    ),
    "zip, a real PNG header then zeros": (
        _zip,
        [("a.png", _tiny_png(), EXPANDS_TO)],
        "'a.png' holds more than",
    ),
    "zip, a header past the pixel limit": (
        _zip,
        [("big.png", _png_header(100_000, 100_000), EXPANDS_TO)],
        "100000x100000 image exceeds max_image_pixels",
    ),
    "tar.gz of zeros": (
        _tgz,
        [("bomb.png", b"", EXPANDS_TO)],
        "'bomb.png' is not a PNG, JPEG or WebP image",
    ),
    "zip, an endless labels.csv": (
        _zip,
        [("a.png", _tiny_png(), 0), ("labels.csv", b"a.png,0\n", EXPANDS_TO)],
        "'labels.csv' is larger than",
    ),
    "tar.gz, a hidden member past the expansion limit": (
        _tgz,
        [(".hidden", b"", EXPANDS_TO + (1 << 20)), ("a.png", _tiny_png(), 0)],
        "expands past max_extracted_bytes",
    ),
}


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[LiveServer]:
    live = LiveServer(
        tmp_path_factory.mktemp("bombs"),
        SHIFTAUDIT_MAX_PROBE_SET_BYTES=str(EXPANDS_TO),
        SHIFTAUDIT_MAX_PROBE_SET_EXPANDED_BYTES=str(EXPANDS_TO),
        SHIFTAUDIT_MAX_CONCURRENT_PROBE_CHECKS="1",
        SHIFTAUDIT_MAX_PROBE_IMAGES="1000",  # labels.csv may then hold 256 KB
    )
    live.writer = live.key("bombs", "write")
    live.start()
    yield live
    live.stop()


class ScratchSampler:
    """Samples, every 20 ms, the bytes under the scratch directory and how many probe-set
    extractions are in it at once."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.peak_bytes = 0
        self.peak_extractions = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            total, extractions = 0, 0
            try:
                paths = list(self.root.rglob("*")) if self.root.exists() else []
            except OSError:
                continue  # a directory went away while it was listed: sample again
            for path in paths:
                try:
                    if path.is_file():
                        total += path.stat().st_size
                    elif path.name.startswith("shiftaudit-probes-"):
                        extractions += 1
                except OSError:
                    continue  # removed while we looked
            self.peak_bytes = max(self.peak_bytes, total)
            self.peak_extractions = max(self.peak_extractions, extractions)
            time.sleep(0.02)

    def __enter__(self) -> ScratchSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        time.sleep(0.1)
        self._stop.set()
        self._thread.join()


def _upload(server: LiveServer, archive: bytes, filename: str) -> httpx.Response:
    with httpx.Client(base_url=server.url, timeout=120) as http:
        return http.post(
            "/v1/probe-sets",
            headers={"Authorization": f"Bearer {server.writer}"},
            data={"name": filename},
            files={"file": (filename, archive)},
        )


@pytest.mark.parametrize("bomb", list(BOMBS))
def test_a_bomb_is_refused_before_it_expands(server, tmp_path, bomb):
    build, members, why = BOMBS[bomb]
    suffix = ".zip" if build is _zip else ".tar.gz"
    archive = build(tmp_path / f"bomb{suffix}", members).read_bytes()
    assert len(archive) < 4 << 20  # small on the wire
    with ScratchSampler(server.data_dir / "tmp") as sampler:
        response = _upload(server, archive, f"bomb{suffix}")
    assert sampler.peak_bytes < SCRATCH_PEAK, f"{sampler.peak_bytes} bytes written to scratch"
    assert response.status_code == 422, response.text
    assert why in response.json()["detail"]


def test_concurrent_archive_checks_are_bounded(server, tmp_path):
    archives = [
        zip_directory(noise_probes(tmp_path / f"set{i}", 300, size=128, seed=i)) for i in range(4)
    ]
    with ScratchSampler(server.data_dir / "tmp") as sampler, ThreadPoolExecutor(4) as pool:
        responses = list(
            pool.map(lambda a: _upload(server, a[1], f"set{a[0]}.zip"), enumerate(archives))
        )
    assert [r.status_code for r in responses] == [201] * 4, [r.text for r in responses]
    assert [r.json()["image_count"] for r in responses] == [300] * 4
    # MAX_CONCURRENT_PROBE_CHECKS is 1: never two extractions at once.
    assert sampler.peak_extractions == 1
