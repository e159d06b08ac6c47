"""Networks with analytically known shift behaviour, their exports, and probe sets."""

from __future__ import annotations

import csv
import io
import zipfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn


class GlobalPoolNet(nn.Module):
    """Circular stride-1 convs + global average pooling: exactly invariant to circular shifts.

    With `stride=2` the first layer samples every other pixel, so the net is invariant to even
    circular shifts only (period 2). A large `width` makes a net slow enough to interrupt.
    """

    def __init__(self, stride: int = 1, classes: int = 5, seed: int = 0, width: int = 16):
        super().__init__()
        torch.manual_seed(seed)
        self.first = nn.Conv2d(3, width // 2, 3, stride=stride, padding=1, padding_mode="circular")
        self.second = nn.Conv2d(width // 2, width, 3, padding=1, padding_mode="circular")
        self.head = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.first(x))
        x = torch.relu(self.second(x))
        return self.head(x.mean(dim=(2, 3)))


class DenseHeadNet(nn.Module):
    """A dense layer on flattened features: position leaks straight into the logits."""

    def __init__(self, size: int = 16, classes: int = 5, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(3, 4, 3, padding=1, padding_mode="circular")
        self.head = nn.Linear(4 * size * size, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x)).flatten(1))


class AliasingNet(nn.Module):
    """Zero padding, a strided conv and max pooling: a typical, non-invariant CNN."""

    def __init__(self, classes: int = 6, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.ReLU(),
        )
        self.head = nn.Linear(16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).amax(dim=(2, 3)))


class TinyViT(nn.Module):
    """Patch embedding (stride 4) to tokens, a class token, optional position embedding."""

    def __init__(self, size: int = 16, classes: int = 5, positional: bool = True, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Conv2d(3, 12, 4, stride=4)
        self.cls = nn.Parameter(torch.randn(1, 1, 12))
        grid = size // 4
        self.pos = nn.Parameter(
            torch.randn(1, grid * grid, 12) if positional else torch.zeros(1, grid * grid, 12)
        )
        self.mlp = nn.Linear(12, 12)
        self.head = nn.Linear(12, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x).flatten(2).transpose(1, 2) + self.pos
        tokens = torch.cat([self.cls.expand(x.shape[0], -1, -1), tokens], dim=1)
        tokens = torch.relu(self.mlp(tokens))
        return self.head(tokens.mean(dim=1))


def export_all(module: nn.Module, directory: Path, size: int = 16) -> dict[str, Path]:
    """The same module as ONNX, TorchScript and torch.export files, with a dynamic batch."""
    module = module.eval()
    example = torch.randn(2, 3, size, size)
    paths = {
        "onnx": directory / "model.onnx",
        "torchscript": directory / "model.ts",
        "torch_export": directory / "model.pt2",
    }
    torch.onnx.export(
        module,
        (example,),
        str(paths["onnx"]),
        dynamo=False,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
    )
    torch.jit.trace(module, example).save(str(paths["torchscript"]))
    batch = torch.export.Dim("batch", min=1, max=65536)
    torch.export.save(
        torch.export.export(module, (example,), dynamic_shapes=({0: batch},)), paths["torch_export"]
    )
    return paths


def export_program(module: nn.Module, path: Path, size: int = 16) -> Path:
    batch = torch.export.Dim("batch", min=1, max=65536)
    example = torch.randn(2, 3, size, size)
    torch.export.save(
        torch.export.export(module.eval(), (example,), dynamic_shapes=({0: batch},)), path
    )
    return path


def phase_probes(directory: Path, count: int, size: int = 16, seed: int = 0) -> Path:
    """Four random colours tiled in a 2x2 pattern: what a stride-2 sampler sees depends on
    the shift's parity, so such a net's answer does too."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        tile = rng.integers(0, 256, (2, 2, 3), dtype=np.uint8)
        pixels = np.tile(tile, (size // 2, size // 2, 1))
        Image.fromarray(pixels).save(directory / f"phase{i:04d}.png")
    return directory


def noise_probes(
    directory: Path, count: int, size: int = 16, labels: int | None = None, seed: int = 0
) -> Path:
    """Random RGB PNGs, optionally with random labels in labels.csv."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(count):
        name = f"probe{i:04d}.png"
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(
            directory / name
        )
        if labels:
            rows.append((name, int(rng.integers(0, labels))))
    if labels:
        with open(directory / "labels.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["filename", "label"])
            writer.writerows(rows)
    return directory


def zip_directory(directory: Path) -> bytes:
    """The files of a probe directory as zip bytes, members sorted by name."""
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as bundle:
        for path in sorted(directory.iterdir()):
            bundle.write(path, path.name)
    return archive.getvalue()


class ChainNet(nn.Module):
    """A conv, then a long chain of small layers on pooled features: eager PyTorch pays its
    per-operator overhead on every link, ONNX Runtime hardly any, so ONNX Runtime runs this
    several times faster at any batch size. `log1p`: each link also passes through
    log1p(1e-6 h) * 1e6, the identity up to float32 rounding in PyTorch; ONNX has no Log1p,
    and its log(1 + x) loses the small argument to rounding, so the export disagrees."""

    def __init__(self, depth: int = 96, classes: int = 5, log1p: bool = False, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.links = nn.ModuleList([nn.Linear(8, 8) for _ in range(depth)])
        self.head = nn.Linear(8, classes)
        self.log1p = log1p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.stem(x)).amax(dim=(2, 3))
        for link in self.links:
            h = h + 0.1 * torch.tanh(link(h))
            if self.log1p:
                h = torch.log1p(h * 1e-6) * 1e6
        return self.head(h) * 10.0


class UnfiniteNet(nn.Module):
    """A classifier whose logits are NaN for every input: nothing about it is invariance."""

    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.head = nn.Linear(3, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x.mean(dim=(2, 3))) * torch.log(x.mean() * 0.0 - 1.0)


def export_onnx(module: nn.Module, path: Path, size: int = 16) -> Path:
    """The module as ONNX (the TorchScript-based exporter, as export_all), dynamic batch."""
    import warnings

    with warnings.catch_warnings():  # the legacy exporter's notes on deprecation and folding
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module.eval(),
            (torch.randn(2, 3, size, size),),
            str(path),
            dynamo=False,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )
    return path
