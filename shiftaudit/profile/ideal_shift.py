"""The ideal shift T_d of a map or token grid (science.md, report 1.2).

T_d, for d in R^2, is the band-limited, periodic shift of a map by d samples: multiply its
2-D DFT over the spatial axes by exp(-2 pi i (k_y d_y / h + k_x d_x / w)) and take the real
part. k runs over the signed frequencies of ``torch.fft.fftfreq`` (k / h in [-1/2, 1/2)), the
band-limited choice: for even h the Nyquist bin k = -h/2 is the one whose phase turns, and
the real part halves what a fractional d moves out of it. For integer d, T_d is ``roll_d``
exactly, so integer shifts are rolls here and carry no rounding at all.
"""

from __future__ import annotations

import math

import torch

from .geometry import Geometry, from_grid_view, grid_view


def is_integer_shift(d: tuple[float, float]) -> bool:
    """Whether both components of d are whole samples."""
    return all(float(c).is_integer() for c in d)


def ideal_shift(value: torch.Tensor, d: tuple[float, float], geometry: Geometry) -> torch.Tensor:
    """T_d value: the positions of `value` moved by d = (d_y, d_x) samples, extras unchanged.

    T_d F = Re IDFT( DFT(F) * exp(-2 pi i (k_y d_y / h + k_x d_x / w)) ), in `value`'s dtype
    (computed in float64 when d is fractional).
    """
    if not geometry.spatial:
        raise ValueError("the ideal shift needs a map or a token grid")
    grid, dims = grid_view(value, geometry)
    if is_integer_shift(d):
        moved = torch.roll(grid, (int(d[0]), int(d[1])), dims=dims)
    else:
        moved = _fourier_shift(grid, d, dims).to(value.dtype)
    return from_grid_view(moved, value, geometry)


def _fourier_shift(
    grid: torch.Tensor, d: tuple[float, float], dims: tuple[int, int]
) -> torch.Tensor:
    """Re IDFT(DFT(grid) * exp(-2 pi i (k_y d_y / h + k_x d_x / w))) over `dims`, float64."""
    h, w = grid.shape[dims[0]], grid.shape[dims[1]]
    fy = torch.fft.fftfreq(h, dtype=torch.float64, device=grid.device)  # k_y / h
    fx = torch.fft.fftfreq(w, dtype=torch.float64, device=grid.device)  # k_x / w
    phase = -2 * math.pi * (fy[:, None] * d[0] + fx[None, :] * d[1])
    shape = [1] * grid.dim()
    shape[dims[0]], shape[dims[1]] = h, w
    ramp = torch.polar(torch.ones_like(phase), phase).reshape(shape)
    spectrum = torch.fft.fft2(grid.to(torch.float64), dim=dims)
    moved: torch.Tensor = torch.fft.ifft2(spectrum * ramp, dim=dims).real
    return moved
