"""The corner experiment: a dense head learns where an object was, a global pool what it is.

Two classes of 8 x 8 objects, a plus and a cross, each in a random colour, are pasted on a
black 32 x 32 canvas, during training only in the top-left quadrant (top-left corner in
0..8 on both axes). Two small classifiers learn them:

- ``dense_head``: three zero-padded 3 x 3 convolutions at strides 1, 2, 2 (a receptive
  field of 9 x 9 pixels, about a quarter of the side) and a dense layer on the flattened
  8 x 8 map. The dense layer starts at zero, so that the weights of positions where no
  object ever appeared stay blind to objects, as they would after long training with
  weight decay;
- ``circular_gap``: two circularly padded 3 x 3 convolutions at stride 1 and a global
  average pool. Moving an object on a uniform canvas is a circular roll of the canvas,
  and this network is exactly invariant to rolls.

The two classes differ in the orientation of their strokes, which a 3 x 3 filter sees
anywhere, so that both networks learn them in a few dozen steps on a CPU.

Both are exported with torch.export and audited with a ``canvas`` sweep (the object pasted
with its top-left corner on every point of a 4-pixel grid). What the question behind the
project predicts (science.md; Kayhan & van Gemert 2020): the first recognises objects only
where it was trained and its layer profile finds a ``position_leak`` at the dense head; the
second recognises them everywhere, with a ``global_pool`` and no leak.
"""

from __future__ import annotations

import csv
import itertools
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import nn

from .config import AuditConfig
from .report import LayerFindings, PositionMap, Report

CANVAS = 32
OBJECT = 8
TRAIN_POSITIONS = CANVAS // 2 - OBJECT + 1  # top-left corners 0..8: inside the top-left quadrant
STEP = 4
_TRAIN_IMAGES = 768
_EPOCHS = 3
_BATCH = 64
_PROBES_PER_CLASS = 8


@dataclass(frozen=True)
class CornerRun:
    """One network of the experiment: its files, its position map and its findings."""

    name: str
    model: Path
    report: Path
    plot: Path
    train_accuracy: float
    positions: list[int]  # top-left corners of the object, on both axes
    accuracy: list[list[float]]  # by (y, x) position
    agreement: list[list[float]]
    top_left_accuracy: float  # mean over positions whose object lies in the top-left quadrant
    bottom_right_accuracy: float  # ... in the bottom-right quadrant
    findings: LayerFindings


@dataclass(frozen=True)
class CornerResult:
    """Both networks, and how long the whole experiment took."""

    dense_head: CornerRun
    circular_gap: CornerRun
    seconds: float


def plus_and_cross() -> tuple[np.ndarray, np.ndarray]:
    """The two 8 x 8 object masks: class 0 a plus (2-pixel bars), class 1 a diagonal cross."""
    plus = np.zeros((OBJECT, OBJECT), dtype=np.float32)
    plus[3:5, 1:7] = plus[1:7, 3:5] = 1.0
    cross = np.zeros((OBJECT, OBJECT), dtype=np.float32)
    for i in range(1, OBJECT - 1):
        cross[i, i] = cross[i, OBJECT - 1 - i] = 1.0
    return plus, cross


def object_patches(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(N, 8, 8, 3) float objects in [0, 1]: each mask in a random colour of 0.4..1 per channel."""
    masks = np.stack(plus_and_cross())[labels]
    colours = rng.uniform(0.4, 1.0, size=(len(labels), 1, 1, 3)).astype(np.float32)
    patches: np.ndarray = masks[..., None] * colours
    return patches


def training_set(rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Canvases (N, 3, 32, 32) with one object each, top-left corner in 0..8, and labels."""
    labels = rng.integers(0, 2, size=_TRAIN_IMAGES)
    patches = object_patches(labels, rng)
    corners = rng.integers(0, TRAIN_POSITIONS, size=(_TRAIN_IMAGES, 2))
    canvases = np.zeros((_TRAIN_IMAGES, CANVAS, CANVAS, 3), dtype=np.float32)
    for canvas, patch, (y, x) in zip(canvases, patches, corners, strict=True):
        canvas[y : y + OBJECT, x : x + OBJECT] = patch
    return torch.from_numpy(canvases).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(labels)


class DenseHead(nn.Module):
    """Zero-padded convs at strides 1, 2, 2 (field 9 x 9) and a dense layer on the 8 x 8 map."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 16, 3, stride=2, padding=1),
            nn.ReLU(),
        )
        self.head = nn.Linear(16 * 8 * 8, 2)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.head(self.features(x).flatten(1))
        return logits


class CircularGap(nn.Module):
    """Circularly padded stride-1 convs and a global average pool: invariant to rolls."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1, padding_mode="circular"),
            nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1, padding_mode="circular"),
            nn.ReLU(),
        )
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.head(self.features(x).mean(dim=(2, 3)))
        return logits


def train(network: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, seed: int) -> float:
    """Adam on cross-entropy for a few epochs; returns the final training accuracy."""
    generator = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.Adam(network.parameters(), lr=1e-2)
    network.train()
    for _ in range(_EPOCHS):
        order = torch.randperm(len(images), generator=generator)
        for start in range(0, len(images), _BATCH):
            batch = order[start : start + _BATCH]
            loss = nn.functional.cross_entropy(network(images[batch]), labels[batch])
            optimiser.zero_grad()
            torch.autograd.backward([loss])
            optimiser.step()
    network.eval()
    with torch.no_grad():
        return float((network(images).argmax(1) == labels).float().mean())


def write_probes(directory: Path, rng: np.random.Generator) -> Path:
    """The audit's probes: 8 x 8 PNG objects of both classes and their labels.csv."""
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("object*.png"):  # of an earlier run: labels.csv must list all
        stale.unlink()
    labels = np.repeat([0, 1], _PROBES_PER_CLASS)
    patches = object_patches(labels, rng)
    rows = []
    for i, (patch, label) in enumerate(zip(patches, labels, strict=True)):
        name = f"object{i:02d}.png"
        Image.fromarray(np.round(patch * 255).astype(np.uint8)).save(directory / name)
        rows.append((name, int(label)))
    with open(directory / "labels.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["filename", "label"])
        writer.writerows(rows)
    return directory


def audit_config(seed: int) -> AuditConfig:
    """A canvas sweep of the 8 x 8 objects over the 32 x 32 canvas, on a 4-pixel grid."""
    return AuditConfig.model_validate(
        {
            # Pixels / 255, as in training; black is the canvas and the fill.
            "preprocess": {
                "input_size": [CANVAS, CANVAS],
                "resize": CANVAS,
                "mean": [0, 0, 0],
                "std": [1, 1, 1],
            },
            "sweep": {"mode": "canvas", "object_size": OBJECT, "step": STEP},
            "runtime": {"device": "cpu", "batch_size": 64},
            "bootstrap": 200,
            "seed": seed,
        }
    )


def _position_map(report: Report) -> tuple[PositionMap, list[list[float]]]:
    """The report's position map and its accuracy (a canvas sweep on labelled probes)."""
    position = report.position_map
    if position is None or position.accuracy is None:
        raise ValueError("the corner experiment needs a canvas sweep on labelled probes")
    return position, position.accuracy


def quadrant_means(report: Report) -> tuple[float, float]:
    """Mean accuracy over positions whose object lies in the top-left / bottom-right quadrant."""
    position, accuracy_rows = _position_map(report)
    accuracy = np.array(accuracy_rows)
    ys, xs = np.array(position.positions_y), np.array(position.positions_x)
    half = CANVAS // 2
    top_left = accuracy[np.ix_(ys + OBJECT <= half, xs + OBJECT <= half)]
    bottom_right = accuracy[np.ix_(ys >= half, xs >= half)]
    return float(top_left.mean()), float(bottom_right.mean())


def _colour(value: float) -> tuple[int, int, int]:
    """Red (0) through pale yellow (0.5) to green (1)."""
    stops = [(0.0, (165, 0, 38)), (0.5, (255, 255, 191)), (1.0, (0, 104, 55))]
    value = min(max(value, 0.0), 1.0)
    for (a, low), (b, high) in itertools.pairwise(stops):
        if value <= b:
            w = (value - a) / (b - a)
            r, g, bl = (round(lo + w * (hi - lo)) for lo, hi in zip(low, high, strict=True))
            return (r, g, bl)
    return stops[-1][1]


def position_map_png(report: Report, path: Path, *, title: str) -> Path:
    """A PNG heat map of accuracy by object position, the training quadrant outlined."""
    position, accuracy = _position_map(report)
    cell, margin, top = 44, 36, 40
    rows, cols = len(position.positions_y), len(position.positions_x)
    image = Image.new("RGB", (margin + cols * cell + 8, top + margin + rows * cell + 8), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    draw.text((8, 8), title, fill="black", font=font)
    draw.text(
        (margin, top - 4),
        "object's top-left corner: x across, y down",
        fill="gray",
        font=font,
        anchor="lb",
    )
    for j, x in enumerate(position.positions_x):
        draw.text(
            (margin + j * cell + cell // 2, top + 12), str(x), fill="black", font=font, anchor="mm"
        )
    for i, y in enumerate(position.positions_y):
        y0 = top + margin + i * cell
        draw.text((margin // 2, y0 + cell // 2), str(y), fill="black", font=font, anchor="mm")
        for j, value in enumerate(accuracy[i]):
            x0 = margin + j * cell
            draw.rectangle([x0, y0, x0 + cell - 1, y0 + cell - 1], fill=_colour(value))
            ink = "white" if value < 0.2 or value > 0.8 else "black"
            draw.text(
                (x0 + cell // 2, y0 + cell // 2), f"{value:.2f}", fill=ink, font=font, anchor="mm"
            )
    trained = [j for j, x in enumerate(position.positions_x) if x < TRAIN_POSITIONS]
    trained_rows = [i for i, y in enumerate(position.positions_y) if y < TRAIN_POSITIONS]
    if trained and trained_rows:
        draw.rectangle(
            [
                margin + trained[0] * cell,
                top + margin + trained_rows[0] * cell,
                margin + (trained[-1] + 1) * cell - 1,
                top + margin + (trained_rows[-1] + 1) * cell - 1,
            ],
            outline="black",
            width=3,
        )
    image.save(path)
    return path


def _export(network: nn.Module, path: Path) -> Path:
    batch = torch.export.Dim("batch", min=1, max=4096)
    example = torch.zeros(2, 3, CANVAS, CANVAS)
    torch.export.save(torch.export.export(network, (example,), dynamic_shapes=({0: batch},)), path)
    return path


def run_corner_experiment(out_dir: str | Path, seed: int = 0) -> CornerResult:
    """Train both networks, export and audit them, and write reports and position-map PNGs."""
    from .engine import run_audit

    started = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    images, labels = training_set(rng)
    probes = write_probes(out / "probes", rng)
    config = audit_config(seed)
    runs = {}
    for offset, (name, network_class, title) in enumerate(
        [
            ("dense_head", DenseHead, "dense head on a flattened 8x8 map: accuracy by position"),
            ("circular_gap", CircularGap, "circular padding + global pool: accuracy by position"),
        ]
    ):
        torch.manual_seed(seed + offset)
        network = network_class()
        train_accuracy = train(network, images, labels, seed=seed + offset)
        model = _export(network, out / f"{name}.pt2")
        report = run_audit(model, probes, config)
        report_path = out / f"{name}.json"
        report_path.write_text(report.model_dump_json(indent=2))
        position, accuracy = _position_map(report)
        findings = report.layers.findings
        if findings is None:
            raise ValueError(f"the layer profile of {name} is missing: {report.layers.reason}")
        top_left, bottom_right = quadrant_means(report)
        runs[name] = CornerRun(
            name=name,
            model=model,
            report=report_path,
            plot=position_map_png(report, out / f"{name}.png", title=title),
            train_accuracy=train_accuracy,
            positions=position.positions_y,
            accuracy=accuracy,
            agreement=position.agreement,
            top_left_accuracy=top_left,
            bottom_right_accuracy=bottom_right,
            findings=findings,
        )
    return CornerResult(
        dense_head=runs["dense_head"],
        circular_gap=runs["circular_gap"],
        seconds=round(time.perf_counter() - started, 2),
    )


def corner_lines(result: CornerResult) -> list[str]:
    """What the experiment found, for the CLI: per network its quadrants and its findings."""
    lines = []
    for run in (result.dense_head, result.circular_gap):
        agreement = min(min(row) for row in run.agreement)
        lines.append(
            f"{run.name}: accuracy {run.top_left_accuracy:.2f} in the top-left quadrant (trained), "
            f"{run.bottom_right_accuracy:.2f} in the bottom-right; lowest agreement {agreement:.2f}"
        )
        lines += [f"  {line}" for line in run.findings.summary]
        lines.append(f"  report {run.report}, position map {run.plot}")
    lines.append(f"corner experiment: {result.seconds:.1f}s")
    return lines
