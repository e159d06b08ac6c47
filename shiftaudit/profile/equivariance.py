"""The per-layer shift errors of report 1.2 (science.md, "Per-layer equivariance").

For a layer output F at cumulative stride j and a circular input shift t,

    E(F, t) = ||F(roll_t x) - T_{t/j} F(x)|| / ||F(x)||

(Frobenius over the layer's grid positions, per probe), averaged over the probes and the
shifts of a set:

- on-grid, t in {(j, 0), (0, j), (j, j)}: t / j is whole, so T is a roll; zero for a network
  that pads circularly, so on the deployed network it measures the borders;
- off-grid, t in {(1, 0), (0, 1), (1, 1)}: the one-pixel moves the flip rate counts; on the
  torus variant (every padding circular) this is the aliasing error.

The local aliasing of one node f with inputs h_k at strides j_k is the same ratio for the node
alone: ||f(T_{t/j_1} h_1, ...) - T_{t/j} f(h_1, ...)|| / ||f(h_1, ...)||, over the off-grid t.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .geometry import Geometry, positions
from .ideal_shift import ideal_shift

ON_GRID = ((1, 0), (0, 1), (1, 1))  # times j
OFF_GRID: tuple[tuple[int, int], ...] = ((1, 0), (0, 1), (1, 1))


def on_grid_shifts(stride: int) -> list[tuple[int, int]]:
    """{(j, 0), (0, j), (j, j)}: the input shifts that are whole steps of a stride-j layer."""
    return [(stride * a, stride * b) for a, b in ON_GRID]


def output_shift(t: tuple[int, int], stride: int) -> tuple[float, float]:
    """t / j: how far an input shift t moves the grid of a stride-j layer, in its samples."""
    return (t[0] / stride, t[1] / stride)


def shift_errors(
    *, shifted: torch.Tensor, reference: torch.Tensor, t: tuple[int, int], geometry: Geometry
) -> torch.Tensor:
    """E(F, t) per probe: ||shifted - T_{t/j} reference|| / ||reference||, float64.

    Probes whose reference is all zeros have no relative error and are left out.
    """
    assert geometry.stride is not None
    expected = ideal_shift(reference.double(), output_shift(t, geometry.stride), geometry)
    return relative_distance(
        actual=positions(shifted.double(), geometry),
        expected=positions(expected, geometry),
        norm_of=positions(reference.double(), geometry),
    )


def relative_distance(
    *, actual: torch.Tensor, expected: torch.Tensor, norm_of: torch.Tensor
) -> torch.Tensor:
    """||actual - expected|| / ||norm_of|| per probe (Frobenius over all but the batch axis)."""
    count = actual.shape[0]
    norm = norm_of.reshape(count, -1).norm(dim=1)
    distance = (actual - expected).reshape(count, -1).norm(dim=1)
    ratio: torch.Tensor = (distance / norm)[norm > 0]
    return ratio


def cosines(
    *, shifted: torch.Tensor, reference: torch.Tensor, t: tuple[int, int], geometry: Geometry
) -> torch.Tensor:
    """Cosine similarity of F(roll_t x) and T_{t/j} F(x) per probe (F(x) = 0 left out)."""
    assert geometry.stride is not None
    count = reference.shape[0]
    expected = positions(
        ideal_shift(reference.double(), output_shift(t, geometry.stride), geometry), geometry
    ).reshape(count, -1)
    actual = positions(shifted.double(), geometry).reshape(count, -1)
    keep = positions(reference.double(), geometry).reshape(count, -1).norm(dim=1) > 0
    return torch.nn.functional.cosine_similarity(actual, expected, dim=1)[keep]


@dataclass
class ErrorSamples:
    """Per-probe errors gathered over the shifts of one set, for one layer."""

    values: list[torch.Tensor] = field(default_factory=list)

    def add(self, errors: torch.Tensor) -> None:
        """Record the per-probe errors of one shift."""
        self.values.append(errors.detach().cpu())

    def mean(self) -> float | None:
        """The mean over probes and shifts; None when nothing was measured."""
        joined = self._joined()
        return float(joined.mean()) if len(joined) else None

    def max(self) -> float | None:
        """The largest per-probe error; None when nothing was measured."""
        joined = self._joined()
        return float(joined.max()) if len(joined) else None

    def _joined(self) -> torch.Tensor:
        return torch.cat(self.values) if self.values else torch.zeros(0, dtype=torch.float64)
