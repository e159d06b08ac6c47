"""From decoded probe pixels to model inputs, in torch on the audit's device.

Pixels stay in "pixel units" (0..1, RGB, channels last) until after the shift, because fill
colours are defined in pixel space (science.md); normalisation, channel order and layout are
applied to each shifted batch in one fused step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .config import DEFAULT_CROP_FRACTION, PreprocessConfig
from .errors import ConfigError
from .shifts import ShiftPlan


@dataclass(frozen=True)
class SourceGeometry:
    """Resize the shorter side to `shorter`, then centre-crop to `size` (H, W)."""

    shorter: int
    size: tuple[int, int]


def source_geometry(plan: ShiftPlan, preprocess: PreprocessConfig) -> SourceGeometry:
    """The geometry of the image a plan's shifts read from (science.md, per family)."""
    height, width = plan.input_size
    if plan.mode == "crop":
        return SourceGeometry(max(height, width) + 2 * plan.margin, plan.source_size)
    if plan.mode == "canvas":
        return SourceGeometry(plan.source_size[0], plan.source_size)
    return standard_geometry(plan.input_size, preprocess)


def standard_geometry(size: tuple[int, int], preprocess: PreprocessConfig) -> SourceGeometry:
    """The usual evaluation transform: resize the shorter side, centre-crop to the input."""
    shorter = preprocess.resize or round(max(size) / DEFAULT_CROP_FRACTION)
    if shorter < min(size):
        raise ConfigError(f"preprocess.resize {shorter} is smaller than the input size {size}")
    return SourceGeometry(shorter, size)


def to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """Host array -> device tensor without making the host wait for the device's queue.

    A blocking copy first drains the stream; a non-blocking one from pinned memory returns at
    once, so the GPU keeps working through the previous chunk meanwhile.
    """
    host = torch.from_numpy(np.array(array))
    if device.type != "cuda":
        return host
    # Only a pinned source makes the copy asynchronous (pageable ones are staged in lockstep).
    return host.pin_memory().to(device, non_blocking=True)


def sources(
    images: list[np.ndarray], geometry: SourceGeometry, device: torch.device
) -> torch.Tensor:
    """Decoded (h, w, 3) uint8 images -> (N, Hs, Ws, 3) float32 pixel units on `device`.

    One host-to-device copy for all of them, and one resize per distinct image size: a chunk
    of a probe set (usually of one size) costs a handful of kernels, not a few per image,
    which on a GPU left the device idle while the host launched them.
    """
    pixels = _upload(images, device)
    by_size: dict[tuple[int, int], list[int]] = {}
    for i, image in enumerate(images):
        by_size.setdefault((image.shape[0], image.shape[1]), []).append(i)
    if len(by_size) == 1:
        return _fit(torch.stack(pixels), geometry)
    out = torch.empty(len(images), *geometry.size, 3, dtype=torch.float32, device=device)
    for members in by_size.values():
        group = _fit(torch.stack([pixels[i] for i in members]), geometry)
        out[to_device(np.array(members), device)] = group
    return out


def _upload(images: list[np.ndarray], device: torch.device) -> list[torch.Tensor]:
    """Decoded images -> tensors on `device`, in one host-to-device copy for a GPU.

    Per-image copies cost a driver call each (about a millisecond, host blocked); packing
    them into one pinned buffer makes it one asynchronous copy.
    """
    if device.type != "cuda":
        return [torch.from_numpy(np.array(image)) for image in images]
    sizes = [image.size for image in images]
    packed = torch.empty(sum(sizes), dtype=torch.uint8, pin_memory=True)
    flat = packed.numpy()
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    for image, start, stop in zip(images, offsets[:-1], offsets[1:], strict=True):
        flat[start:stop] = image.reshape(-1)
    on_device = packed.to(device, non_blocking=True)
    return [
        on_device[start:stop].view(image.shape)
        for image, start, stop in zip(images, offsets[:-1], offsets[1:], strict=True)
    ]


def _fit(images: torch.Tensor, geometry: SourceGeometry) -> torch.Tensor:
    """(N, h, w, 3) uint8 -> (N, H, W, 3) float32 pixel units, antialiased bilinear like Pillow."""
    tensor = images.permute(0, 3, 1, 2).float()
    h, w = int(images.shape[1]), int(images.shape[2])
    scale = geometry.shorter / min(h, w)
    new_h = max(round(h * scale), geometry.size[0])
    new_w = max(round(w * scale), geometry.size[1])
    if (new_h, new_w) != (h, w):
        tensor = F.interpolate(
            tensor, size=(new_h, new_w), mode="bilinear", antialias=True, align_corners=False
        )
    top, left = (new_h - geometry.size[0]) // 2, (new_w - geometry.size[1]) // 2
    crop = tensor[:, :, top : top + geometry.size[0], left : left + geometry.size[1]]
    return (crop.permute(0, 2, 3, 1) / 255.0).clamp_(0.0, 1.0).contiguous()


class Normaliser:
    """Pixel units (..., 3) -> normalised values in the model's channel order.

    Shifting commutes with this per-channel affine map (the fill colour is mapped too, and
    interpolation weights sum to one), so sources are normalised once per probe rather than
    once per shifted image.
    """

    def __init__(self, preprocess: PreprocessConfig, *, device: torch.device) -> None:
        std = torch.tensor(preprocess.std, dtype=torch.float32)
        mean = torch.tensor(preprocess.mean, dtype=torch.float32)
        self._scale = (preprocess.value_scale / std).to(device)
        self._bias = (-mean / std).to(device)
        self._flip = preprocess.channel_order == "BGR"

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        # mean/std are given in the model's channel order, so BGR flips pixels, not them.
        if self._flip:
            pixels = pixels.flip(-1)
        return torch.addcmul(self._bias, pixels, self._scale)

    def fill(self, colour: tuple[int, int, int]) -> torch.Tensor:
        """A fill colour given in 0-255 pixel space, normalised like the pixels."""
        return self(torch.tensor(colour, dtype=torch.float32, device=self._scale.device) / 255.0)


def model_input(images: torch.Tensor, *, layout: str, channels_last: bool) -> torch.Tensor:
    """(M, H, W, C) channels-last images -> the tensor the model is called with."""
    if layout == "NHWC":
        return images
    nchw = images.permute(0, 3, 1, 2)
    return nchw if channels_last else nchw.contiguous()
