"""A small bundled example: a CNN with aliasing strides and real photos as probes.

The model's weights are random (seeded): the example demonstrates the audit, not a classifier.
Its stride-2 convolutions and max pooling alias, so its answers change under 1-pixel shifts.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

# skimage.data ships these photos inside the package (no download).
_PHOTOS = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "immunohistochemistry",
    "retina",
    "camera",
    "coins",
    "moon",
    "page",
    "hubble_deep_field",
    "colorwheel",
)
EXAMPLE_CLASSES = 10
EXAMPLE_SIZE = 64


def example_network(seed: int = 0) -> nn.Module:
    """Conv-ReLU blocks with stride-2 downsampling, global pooling and a dense head."""
    torch.manual_seed(seed)

    def block(c_in: int, c_out: int, stride: int) -> list[nn.Module]:
        return [nn.Conv2d(c_in, c_out, 3, stride, 1), nn.ReLU()]

    features = [
        *block(3, 16, 2),
        nn.MaxPool2d(2),
        *block(16, 32, 1),
        *block(32, 64, 2),
        *block(64, 64, 1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    ]
    head = nn.Linear(64, EXAMPLE_CLASSES)
    # Random features differ little between photos; a sharper head makes the answer depend
    # on them (and so on the aliasing), as a trained classifier's would.
    with torch.no_grad():
        head.weight.mul_(30.0)
    return nn.Sequential(*features, head).eval()


def write_example(directory: str | Path) -> tuple[Path, Path]:
    """Write `model.pt2` (torch.export) and `probes/` (PNG photos); return both paths."""
    from skimage import data  # optional dependency: the `examples` extra

    out = Path(directory)
    probes = out / "probes"
    probes.mkdir(parents=True, exist_ok=True)
    for name in _PHOTOS:
        pixels = np.asarray(getattr(data, name)())
        if pixels.dtype != np.uint8:
            pixels = (255 * (pixels - pixels.min()) / max(np.ptp(pixels), 1e-9)).astype(np.uint8)
        Image.fromarray(pixels).save(probes / f"{name}.png")
    network = example_network()
    example = torch.zeros(2, 3, EXAMPLE_SIZE, EXAMPLE_SIZE)
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.export.export(network, (example,), dynamic_shapes=({0: batch},))
    model_path = out / "model.pt2"
    torch.export.save(program, model_path)
    return model_path, probes
