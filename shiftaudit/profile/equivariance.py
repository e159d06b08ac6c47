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

from .geometry import positions
from .ideal_shift import IdealShifter, frobenius_norms, is_integer_shift

ON_GRID = ((1, 0), (0, 1), (1, 1))  # times j
OFF_GRID: tuple[tuple[int, int], ...] = ((1, 0), (0, 1), (1, 1))


def on_grid_shifts(stride: int) -> list[tuple[int, int]]:
    """{(j, 0), (0, j), (j, j)}: the input shifts that are whole steps of a stride-j layer."""
    return [(stride * a, stride * b) for a, b in ON_GRID]


def output_shift(t: tuple[int, int], stride: int) -> tuple[float, float]:
    """t / j: how far an input shift t moves the grid of a stride-j layer, in its samples."""
    return (t[0] / stride, t[1] / stride)


def shift_errors(
    *,
    shifted: torch.Tensor,
    reference: IdealShifter,
    t: tuple[int, int],
    with_cosine: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """E(F, t) = ||shifted - T_{t/j} reference|| / ||reference|| per probe, and (on request)
    the cosine of the two tensors; probes whose reference is all zeros are left out.

    Computed in the layer's precision: for whole shifts against the roll (which rounds
    nothing, so an exact equivariance gives exactly 0), for fractional ones by Parseval in the
    Fourier domain (`IdealShifter.distances`). The cosine follows from three norms:
    (|a|^2 + |e|^2 - |a - e|^2) / (2 |a| |e|).
    """
    geometry, value = reference.geometry, reference.value
    assert geometry.stride is not None
    d = output_shift(t, geometry.stride)
    shifted = shifted.to(value.dtype)
    norm = reference.norms
    keep = norm > 0
    distance = reference.distances(shifted, d)
    errors = relative_errors(distance, reference)
    if not with_cosine:
        return errors, None
    na = frobenius_norms(positions(shifted, geometry))
    # A roll keeps the norm; a fractional shift need not.
    ne = norm if is_integer_shift(d) else frobenius_norms(positions(reference(d), geometry))
    cosine = (na**2 + ne**2 - distance**2) / (2 * na * ne).clamp_min(torch.finfo(na.dtype).tiny)
    return errors, cosine[keep]


def errors_against(
    *, shifted: torch.Tensor, ideal: torch.Tensor, reference: IdealShifter
) -> torch.Tensor:
    """E = ||shifted - ideal|| / ||reference|| per probe, where `ideal` is T_{t/j} of the
    reference, made already (`IdealShifter.__call__`, shared by every comparison that needs it):
    the difference on the grid, in the layer's precision; probes whose reference is all zeros
    are left out."""
    distance = reference.grid_distances(shifted.to(reference.value.dtype), ideal)
    return relative_errors(distance, reference)


def relative_errors(distance: torch.Tensor, reference: IdealShifter) -> torch.Tensor:
    """distance / ||reference|| per probe; probes whose reference is all zeros are left out."""
    norm = reference.norms
    return (distance / norm)[norm > 0]


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
