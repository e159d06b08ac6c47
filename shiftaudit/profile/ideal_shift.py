"""The ideal shift T_d of a map or token grid (science.md, report 1.2).

T_d, for d in R^2, is the band-limited, periodic shift of a map by d samples: multiply its
2-D DFT over the spatial axes by exp(-2 pi i (k_y d_y / h + k_x d_x / w)) and take the real
part. k runs over the signed frequencies of ``torch.fft.fftfreq`` (k / h in [-1/2, 1/2)), the
band-limited choice: for even h the Nyquist bin k = -h/2 is the one whose phase turns, and
the real part halves what a fractional d moves out of it. For integer d, T_d is ``roll_d``
exactly, so integer shifts are rolls here and carry no rounding at all.

Computed with real FFTs: for a real map with spectrum X, Re IDFT(X R) = IDFT(X R_H) with the
Hermitian part of the ramp, R_H[k] = (R[k] + conj R[-k]) / 2, which differs from R only on
the Nyquist lines of even axes; X R_H is Hermitian, so its half spectrum (rfft2) and irfft2
give the same numbers (to 1e-15 in float64) in half the work of complex FFTs. The FFTs run in
the tensor's own precision (at least float32): for a float32 layer output their rounding,
about 1e-7 relative, is that of the layer's own arithmetic, which float64 would not remove.
"""

from __future__ import annotations

import functools
import math

import torch

from .geometry import Geometry, from_grid_view, grid_view, positions


def is_integer_shift(d: tuple[float, float]) -> bool:
    """Whether both components of d are whole samples."""
    return all(float(c).is_integer() for c in d)


def ideal_shift(value: torch.Tensor, d: tuple[float, float], geometry: Geometry) -> torch.Tensor:
    """T_d value: the positions of `value` moved by d = (d_y, d_x) samples, extras unchanged.

    T_d F = Re IDFT( DFT(F) * exp(-2 pi i (k_y d_y / h + k_x d_x / w)) ), in `value`'s dtype.
    """
    return IdealShifter(value, geometry)(d)


class IdealShifter:
    """T_d of one tensor for several d: its spectrum is taken once, each d costs one inverse."""

    def __init__(self, value: torch.Tensor, geometry: Geometry) -> None:
        if not geometry.spatial:
            raise ValueError("the ideal shift needs a map or a token grid")
        # Integer maps (pooling indices) are compared as numbers, as the 1.1 profile did.
        self.value = value if value.is_floating_point() else value.float()
        self.geometry = geometry
        self._spectrum: torch.Tensor | None = None
        self._norms: torch.Tensor | None = None

    @property
    def norms(self) -> torch.Tensor:
        """||F|| per probe over the grid positions (float64), computed once."""
        if self._norms is None:
            self._norms = frobenius_norms(positions(self.value, self.geometry))
        return self._norms

    def __call__(self, d: tuple[float, float]) -> torch.Tensor:
        """T_d of the tensor, in its dtype."""
        grid, dims = grid_view(self.value, self.geometry)
        if is_integer_shift(d):
            moved = torch.roll(grid, (int(d[0]), int(d[1])), dims=dims)
            return from_grid_view(moved, self.value, self.geometry)
        h, w = grid.shape[dims[0]], grid.shape[dims[1]]
        spectrum = self._spectrum_of()
        shape = [1] * grid.dim()
        shape[dims[0]], shape[dims[1]] = h, w // 2 + 1
        ramp = hermitian_ramp(h, w, (float(d[0]), float(d[1])), device=str(grid.device))
        ramp = ramp.to(spectrum.dtype).reshape(shape)
        moved = torch.fft.irfft2(spectrum * ramp, s=(h, w), dim=dims)
        return from_grid_view(moved.to(self.value.dtype), self.value, self.geometry)

    def distances(self, shifted: torch.Tensor, d: tuple[float, float]) -> torch.Tensor:
        """||shifted - T_d F|| per probe over the grid positions (float64): for whole d
        against the roll, for fractional d from `channel_powers`, without going back to the
        grid."""
        if is_integer_shift(d):
            return self.grid_distances(shifted, self(d))
        return distances_of(self.channel_powers(shifted, d))

    def channel_powers(self, shifted: torch.Tensor, d: tuple[float, float]) -> torch.Tensor:
        """||shifted_c - T_d F_c||^2 per probe and channel (float64, probes x channels) for a
        fractional d, by Parseval on the half spectrum:

            ||a - T_d f||^2 = (1 / (h w)) sum_k m_k |A_k - R_H[k] F_k|^2,

        m_k = 1 on the columns k_x = 0 and (even w) k_x = w / 2, which rfft2 holds once, and 2
        on the others, which stand for their conjugate twins too. The channels are axis 1 of
        an NCHW map (what a per-channel affine layer needs, channel_affine.py); any other
        tensor is one channel."""
        grid, dims = grid_view(shifted, self.geometry)
        h, w = grid.shape[dims[0]], grid.shape[dims[1]]
        spectrum = self._spectrum_of()
        ramp = hermitian_ramp(h, w, (float(d[0]), float(d[1])), device=str(grid.device))
        shape = [1] * grid.dim()
        shape[dims[0]], shape[dims[1]] = h, w // 2 + 1
        residual = torch.fft.rfft2(grid.to(spectrum.real.dtype), dim=dims)
        residual.addcmul_(spectrum, ramp.to(spectrum.dtype).reshape(shape), value=-1)
        per_channel = self.geometry.kind == "map" and dims == (2, 3)

        def power(part: torch.Tensor) -> torch.Tensor:
            # Per row of axis 1, as `frobenius_norms` (float32 over a whole map rounds), of the
            # (re, im) pairs (a float norm).
            rows = torch.view_as_real(part).flatten(2)
            squares: torch.Tensor = torch.linalg.vector_norm(rows, dim=2).double().square()
            return squares if per_channel else squares.sum(dim=1, keepdim=True)

        # Every column twice, less the columns rfft2 holds once (their twins are themselves).
        total = 2 * power(residual) - power(residual.select(dims[1], 0))
        if w % 2 == 0:
            total = total - power(residual.select(dims[1], w // 2))
        powers: torch.Tensor = total / (h * w)
        return powers

    def grid_distances(self, shifted: torch.Tensor, ideal: torch.Tensor) -> torch.Tensor:
        """||shifted - ideal|| per probe over the grid positions (float64), `ideal` being a
        T_d F made already (a roll, or `__call__`'s inverse transform, shared by several
        comparisons)."""
        difference = positions(shifted, self.geometry) - positions(ideal, self.geometry)
        return frobenius_norms(difference)

    def _spectrum_of(self) -> torch.Tensor:
        """rfft2 of the grid positions, in the tensor's precision (at least float32), once."""
        if self._spectrum is None:
            grid, dims = grid_view(self.value, self.geometry)
            precision = torch.promote_types(grid.dtype, torch.float32)
            self._spectrum = torch.fft.rfft2(grid.to(precision), dim=dims)
        return self._spectrum


def distances_of(powers: torch.Tensor) -> torch.Tensor:
    """sqrt(sum_c powers_c) per probe, of squared distances per (probe, channel), float64."""
    distance: torch.Tensor = powers.double().sum(dim=1).clamp_min(0).sqrt()
    return distance


def frobenius_norms(value: torch.Tensor) -> torch.Tensor:
    """The Frobenius norm of each probe's slice of `value` (float64): float32 norms of its
    rows (axis 1), squared and summed in float64. One float32 norm over a whole map of 10^6
    values is off by up to 8e-5 of its square; a row's, by about 1e-8."""
    rows = value.flatten(2) if value.dim() > 2 else value.reshape(value.shape[0], 1, -1)
    norms: torch.Tensor = torch.linalg.vector_norm(rows, dim=2).double()
    return norms.square().sum(dim=1).sqrt()


@functools.lru_cache(maxsize=256)
def hermitian_ramp(h: int, w: int, d: tuple[float, float], *, device: str) -> torch.Tensor:
    """R_H = (R + conj R[-k]) / 2 of R = exp(-2 pi i (k_y d_y / h + k_x d_x / w)), on the half
    spectrum of rfft2 (columns 0 .. w // 2)."""
    fy = torch.fft.fftfreq(h, dtype=torch.float64, device=device)  # k_y / h, signed
    fx = torch.fft.fftfreq(w, dtype=torch.float64, device=device)  # k_x / w, signed
    phase = -2 * math.pi * (fy[:, None] * d[0] + fx[None, :] * d[1])
    ramp = torch.polar(torch.ones_like(phase), phase)
    mirrored = torch.roll(torch.flip(ramp, (0, 1)), (1, 1), (0, 1))  # R[-k mod (h, w)]
    return ((ramp + mirrored.conj()) / 2)[:, : w // 2 + 1]
