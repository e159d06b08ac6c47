"""Decoding untrusted probe images: format and pixel count checked from the header first."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageFile, ImageOps

from shiftaudit.errors import ProbeSetError

__all__ = ["check_header", "decode_image"]

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
