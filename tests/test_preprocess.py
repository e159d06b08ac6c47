"""Source images: Pillow's resize, and one batched fit for probes of mixed sizes."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from shiftaudit.preprocess import SourceGeometry, sources

CPU = torch.device("cpu")


def _photo(height: int, width: int, seed: int) -> np.ndarray:
    """Smooth gradients plus noise: detail at every scale, like a photograph."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = 127 + 100 * np.sin(x / 7.0)[..., None] * np.cos(y / 11.0)[..., None]
    noisy = base + rng.normal(0, 20, (height, width, 3))
    return np.clip(noisy, 0, 255).astype(np.uint8)


def test_resize_and_centre_crop_match_pillow():
    image = _photo(90, 150, seed=1)
    geometry = SourceGeometry(shorter=40, size=(32, 32))
    ours = sources([image], geometry, CPU)[0].numpy()
    # Pillow: shorter side to 40 (90x150 -> 40x67), antialiased bilinear, centre crop 32x32.
    resized = np.asarray(Image.fromarray(image).resize((67, 40), Image.Resampling.BILINEAR))
    top, left = (40 - 32) // 2, (67 - 32) // 2
    pillow = resized[top : top + 32, left : left + 32] / 255.0
    # Pillow rounds to 8 bits; we keep floats.
    assert np.abs(ours - pillow).max() <= 1.0 / 255 + 1e-6


def test_mixed_sizes_are_fitted_as_each_alone_and_keep_their_order():
    images = [_photo(48, 64, 0), _photo(32, 32, 1), _photo(64, 48, 2), _photo(48, 64, 3)]
    geometry = SourceGeometry(shorter=32, size=(32, 32))
    together = sources(images, geometry, CPU)
    assert together.shape == (4, 32, 32, 3)
    for i, image in enumerate(images):
        torch.testing.assert_close(together[i], sources([image], geometry, CPU)[0], rtol=0, atol=0)
    # The 32x32 image needs no resize: it is its own pixels, scaled.
    torch.testing.assert_close(together[1], torch.from_numpy(images[1] / 255.0).float())
