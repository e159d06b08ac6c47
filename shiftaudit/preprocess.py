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


def fit(image: np.ndarray, geometry: SourceGeometry, device: torch.device) -> torch.Tensor:
    """(h, w, 3) uint8 -> (H, W, 3) float32 pixel units, antialiased bilinear like Pillow."""
    tensor = torch.tensor(image, device=device).permute(2, 0, 1)[None].float()
    h, w = image.shape[:2]
    scale = geometry.shorter / min(h, w)
    new_h = max(round(h * scale), geometry.size[0])
    new_w = max(round(w * scale), geometry.size[1])
    if (new_h, new_w) != (h, w):
        tensor = F.interpolate(
            tensor, size=(new_h, new_w), mode="bilinear", antialias=True, align_corners=False
        )
    top, left = (new_h - geometry.size[0]) // 2, (new_w - geometry.size[1]) // 2
    crop = tensor[0, :, top : top + geometry.size[0], left : left + geometry.size[1]]
    return (crop.permute(1, 2, 0) / 255.0).clamp_(0.0, 1.0).contiguous()


class Normaliser:
    """Pixel units (M, H, W, 3) -> the model's input tensor, in one pass."""

    def __init__(
        self,
        preprocess: PreprocessConfig,
        *,
        layout: str,
        channels_last: bool,
        device: torch.device,
    ) -> None:
        std = torch.tensor(preprocess.std, dtype=torch.float32)
        mean = torch.tensor(preprocess.mean, dtype=torch.float32)
        scale, bias = preprocess.value_scale / std, -mean / std
        self._flip = preprocess.channel_order == "BGR"
        self._scale, self._bias = scale.to(device), bias.to(device)
        self.layout = layout
        self.channels_last = channels_last

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        # mean/std are given in the model's channel order, so BGR flips pixels, not them.
        if self._flip:
            pixels = pixels.flip(-1)
        x = torch.addcmul(self._bias, pixels, self._scale)  # (M, H, W, C), channels last
        if self.layout == "NHWC":
            return x
        nchw = x.permute(0, 3, 1, 2)
        return nchw if self.channels_last else nchw.contiguous()
