"""Decoding untrusted probe images: format and pixel count checked from the header first.

`declared_size` reads the size an image declares from its first bytes alone (no decoder
runs), so that an archive member can be refused before it is written out.
"""

from __future__ import annotations

import struct
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageFile, ImageOps

from shiftaudit.errors import ProbeSetError

__all__ = ["NotAnImage", "check_header", "declared_size", "decode_image"]

# MPO is how Pillow reports JPEGs carrying multi-picture data (common from phone cameras).
_FORMATS = ("PNG", "JPEG", "WEBP")
_ACCEPTED_FORMATS = frozenset({*_FORMATS, "MPO"})


@contextmanager
def _opened(path: Path, name: str, max_pixels: int) -> Iterator[Image.Image]:
    """Open an image and check format and size from its header; nothing is decoded yet."""
    try:
        # Pillow's own bomb check only warns below 2 * MAX_IMAGE_PIXELS; make it an error.
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path, formats=_FORMATS) as im:
                if im.format not in _ACCEPTED_FORMATS:
                    raise ProbeSetError(f"{name}: format {im.format} is not PNG, JPEG or WebP")
                width, height = im.size
                if width * height > max_pixels:
                    raise ProbeSetError(
                        f"{name}: {width}x{height} image exceeds max_image_pixels={max_pixels}"
                    )
                yield im
    except ProbeSetError:
        raise
    except Exception as e:  # decoders of untrusted bytes raise OSError, SyntaxError, ...
        raise ProbeSetError(f"{name}: not a readable PNG, JPEG or WebP image: {e}") from e


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers (they hold the size); C4, C8 and CC are other segments.
_JPEG_FRAMES = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})


class NotAnImage(ProbeSetError):
    """The bytes do not begin a PNG, JPEG or WebP image."""


def declared_size(head: bytes, *, complete: bool) -> tuple[str, int, int] | None:
    """(format, width, height) that an image's first bytes declare; None when they are too
    few to tell (and `complete` is false). NotAnImage when they are no PNG, JPEG or WebP."""
    if head.startswith(_PNG_SIGNATURE):
        found = _png_size(head)
    elif head.startswith(b"\xff\xd8\xff"):
        found = _jpeg_size(head)
    elif head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        found = _webp_size(head)
    elif len(head) < 12 and not complete and _could_begin_image(head):
        return None
    else:
        raise NotAnImage("it does not start with a PNG, JPEG or WebP signature")
    if found is None and complete:
        raise NotAnImage("it ends inside its header")
    return found


def _could_begin_image(head: bytes) -> bool:
    return any(
        magic.startswith(head[: len(magic)]) for magic in (_PNG_SIGNATURE, b"\xff\xd8\xff", b"RIFF")
    )


def _png_size(head: bytes) -> tuple[str, int, int] | None:
    if len(head) < 24:
        return None
    if head[12:16] != b"IHDR":
        raise NotAnImage("its PNG signature is not followed by an IHDR chunk")
    width, height = struct.unpack(">II", head[16:24])
    return "PNG", width, height


def _jpeg_size(head: bytes) -> tuple[str, int, int] | None:
    """Walk the segments to the first start-of-frame marker, which holds the size."""
    at = 2
    while True:
        if at + 4 > len(head):
            return None
        if head[at] != 0xFF:
            raise NotAnImage("its JPEG segments are malformed")
        marker = head[at + 1]
        if marker == 0xFF:  # fill byte before a marker
            at += 1
            continue
        if marker in _JPEG_STANDALONE:
            at += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image, start of scan: no frame came first
            raise NotAnImage("its JPEG data starts before any frame header")
        if marker in _JPEG_FRAMES:
            if at + 9 > len(head):
                return None
            height, width = struct.unpack(">HH", head[at + 5 : at + 9])
            return "JPEG", width, height
        at += 2 + struct.unpack(">H", head[at + 2 : at + 4])[0]


def _webp_size(head: bytes) -> tuple[str, int, int] | None:
    if len(head) < 30:
        return None
    chunk = head[12:16]
    if chunk == b"VP8 ":  # lossy: the key frame's header
        width, height = struct.unpack("<HH", head[26:30])
        return "WebP", width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L":  # lossless: 14-bit sizes minus one after the signature byte
        bits = struct.unpack("<I", head[21:25])[0]
        return "WebP", (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":  # extended: the canvas, 24-bit sizes minus one
        width = int.from_bytes(head[24:27], "little") + 1
        height = int.from_bytes(head[27:30], "little") + 1
        return "WebP", width, height
    raise NotAnImage("its WebP header has no VP8, VP8L or VP8X chunk")


def check_header(path: Path, name: str, *, max_pixels: int) -> None:
    with _opened(path, name, max_pixels):
        pass


def decode_image(path: Path, name: str, *, max_pixels: int) -> npt.NDArray[np.uint8]:
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        # Truncated files would be silently padded instead of refused.
        raise ProbeSetError(f"{name}: refusing to decode while PIL LOAD_TRUNCATED_IMAGES is set")
    with _opened(path, name, max_pixels) as im:  # rechecked: the file may have changed
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
