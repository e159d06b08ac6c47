"""Shift sets and the vectorised generation of shifted batches (science.md, "Shift families").

Every family is a separable resampling of a *source* image: output row i reads source row
`i + offset(t)` under a boundary rule (wrap, fill, reflect, clamp), and the same for columns.

| mode      | source                               | row offset  | boundary |
|-----------|--------------------------------------|-------------|----------|
| circular  | preprocessed input, H x W            | -dy         | wrap     |
| zero      | preprocessed input                   | -dy         | fill     |
| reflect   | preprocessed input                   | -dy         | reflect  |
| edge      | preprocessed input                   | -dy         | clamp    |
| crop      | probe resized to (H+2R) x (W+2R)     | R + dy      | inside   |
| canvas    | probe resized to o x o               | -(c + dy)   | fill     |

So `circular` is exactly `torch.roll(x, (dy, dx))`, `crop` shows the window at offset
(R + dy, R + dx), and `canvas` pastes the object with its top-left corner at (c + dy, c + dx),
c being the centred position (t = 0 is the centred object). Fractional shifts interpolate two
taps per axis (bilinear) or multiply by a phase ramp in the Fourier domain (band-limited).
Tables are built once per plan; a batch of any (probe, shift) pairs is then one gather.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from .config import MAX_GRID_SHIFTS, ShiftMode, SweepConfig
from .errors import ConfigError

Boundary = Literal["wrap", "fill", "reflect", "clamp", "inside"]
_BOUNDARY: dict[str, Boundary] = {
    "circular": "wrap",
    "zero": "fill",
    "reflect": "reflect",
    "edge": "clamp",
    "crop": "inside",
    "canvas": "fill",
}


@dataclass(frozen=True)
class ShiftPlan:
    """The shift set T of one audit and how to realise it on a source image."""

    mode: ShiftMode
    shifts: np.ndarray  # (K, 2) float64 (dy, dx); shifts[zero_index] == (0, 0)
    zero_index: int
    adjacent: np.ndarray  # (P, 2) int64 index pairs (t, t') with t' = t + step on one axis
    step: int
    input_size: tuple[int, int]  # (H, W) the model sees
    source_size: tuple[int, int]  # (Hs, Ws) the shifts read from
    margin: int  # crop: R; canvas: the centred top-left offset c; else 0
    subpixel: Literal["bilinear", "fourier"]

    @property
    def count(self) -> int:
        return int(self.shifts.shape[0])

    @property
    def is_integer(self) -> bool:
        return bool(np.all(self.shifts == np.round(self.shifts)))

    def axis_values(self) -> tuple[np.ndarray, np.ndarray]:
        """The distinct dy and dx values, sorted."""
        return np.unique(self.shifts[:, 0]), np.unique(self.shifts[:, 1])


def plan_shifts(sweep: SweepConfig, input_size: tuple[int, int]) -> ShiftPlan:
    """Build the shift set for `sweep` at model input size (H, W)."""
    height, width = input_size
    step = sweep.step
    if sweep.mode == "canvas":
        return _plan_canvas(sweep, height, width)
    if sweep.shifts is not None:
        shifts = np.asarray(sweep.shifts, dtype=np.float64).reshape(-1, 2)
        if not np.any(np.all(shifts == 0, axis=1)):
            shifts = np.vstack([np.zeros((1, 2)), shifts])
        _, first = np.unique(shifts, axis=0, return_index=True)
        shifts = shifts[np.sort(first)]
        reach = math.ceil(float(np.abs(shifts).max()))
    else:
        values = np.arange(-(sweep.max_shift // step), sweep.max_shift // step + 1) * step
        grid = np.stack(np.meshgrid(values, values, indexing="ij"), -1)
        shifts = grid.reshape(-1, 2).astype(np.float64)
        reach = sweep.max_shift
    if sweep.sampling is None and len(shifts) > MAX_GRID_SHIFTS:
        raise ConfigError(
            f"the sweep has {len(shifts)} shifts, more than the {MAX_GRID_SHIFTS} evaluated "
            "exhaustively per probe; set sweep.sampling (random pairs) or a larger step"
        )
    margin = reach if sweep.mode == "crop" else 0
    source = (height + 2 * margin, width + 2 * margin)
    return ShiftPlan(
        mode=sweep.mode,
        shifts=shifts,
        zero_index=int(np.flatnonzero(np.all(shifts == 0, axis=1))[0]),
        adjacent=_adjacent_pairs(shifts, step),
        step=step,
        input_size=(height, width),
        source_size=source,
        margin=margin,
        subpixel=sweep.subpixel,
    )


def _plan_canvas(sweep: SweepConfig, height: int, width: int) -> ShiftPlan:
    side = sweep.object_size or min(height, width) // 2
    if side > min(height, width):
        raise ConfigError(
            f"canvas object_size {side} must not exceed the input size {height}x{width}"
        )
    centre_y, centre_x = (height - side) // 2, (width - side) // 2
    if centre_y != centre_x:
        raise ConfigError("canvas needs a square input so that t = 0 is the centred object")
    step = sweep.step
    # Top-left positions on a grid of `step` through the centre, covering the whole canvas.
    values = np.arange(-(centre_y // step), (height - side - centre_y) // step + 1) * step
    shifts = np.stack(np.meshgrid(values, values, indexing="ij"), -1).reshape(-1, 2)
    shifts = shifts.astype(np.float64)
    return ShiftPlan(
        mode="canvas",
        shifts=shifts,
        zero_index=int(np.flatnonzero(np.all(shifts == 0, axis=1))[0]),
        adjacent=_adjacent_pairs(shifts, step),
        step=step,
        input_size=(height, width),
        source_size=(side, side),
        margin=centre_y,
        subpixel=sweep.subpixel,
    )


def _adjacent_pairs(shifts: np.ndarray, step: int) -> np.ndarray:
    """Index pairs (t, t') with t' - t equal to one step in exactly one axis."""
    index = {(float(y), float(x)): k for k, (y, x) in enumerate(shifts)}
    pairs = [
        (k, other)
        for k, (y, x) in enumerate(shifts)
        for neighbour in ((y + step, x), (y, x + step))
        if (other := index.get((float(neighbour[0]), float(neighbour[1])))) is not None
    ]
    return np.asarray(pairs, dtype=np.int64).reshape(-1, 2)


@dataclass(frozen=True)
class _AxisTable:
    """Two taps per output position and shift: source indices, weights, validity."""

    index0: torch.Tensor  # (K, n) int64, already mapped into the source range
    index1: torch.Tensor
    weight1: torch.Tensor  # (K, n) float32; weight of tap 0 is 1 - weight1
    valid0: torch.Tensor  # (K, n) bool; False: the tap reads the fill colour
    valid1: torch.Tensor


def _axis_table(
    offsets: np.ndarray, out_len: int, src_len: int, boundary: Boundary, device: torch.device
) -> _AxisTable:
    position = np.arange(out_len)[None, :] + offsets[:, None]  # (K, n) fractional source index
    base = np.floor(position)
    weight1 = position - base
    taps = []
    for raw in (base.astype(np.int64), base.astype(np.int64) + 1):
        valid = (raw >= 0) & (raw < src_len)
        if boundary == "wrap":
            mapped = np.mod(raw, src_len)
            valid[:] = True
        elif boundary == "clamp":
            mapped = np.clip(raw, 0, src_len - 1)
            valid[:] = True
        elif boundary == "reflect":
            mapped = _reflect(raw, src_len)
            valid[:] = True
        else:
            mapped = np.clip(raw, 0, src_len - 1)
        taps.append((mapped, valid))
    if boundary == "inside" and not (taps[0][1].all() and taps[1][1][weight1 > 0].all()):
        raise ConfigError("a crop-mode shift reads outside the resized probe")

    def on_device(array: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
        return torch.as_tensor(array, dtype=dtype, device=device)

    return _AxisTable(
        index0=on_device(taps[0][0], torch.int64),
        index1=on_device(taps[1][0], torch.int64),
        weight1=on_device(weight1, torch.float32),
        valid0=on_device(taps[0][1], torch.bool),
        valid1=on_device(taps[1][1], torch.bool),
    )


def _reflect(index: np.ndarray, length: int) -> np.ndarray:
    """numpy/torch 'reflect' (edge not repeated), valid for any distance from the border."""
    if length == 1:
        return np.zeros_like(index)
    period = 2 * (length - 1)
    folded = np.mod(index, period)
    reflected: np.ndarray = np.where(folded < length, folded, period - folded)
    return reflected


class ShiftGenerator:
    """Turns source images into batches of shifted images, one vectorised step per batch."""

    def __init__(
        self, plan: ShiftPlan, *, fill: torch.Tensor, channels_first: bool, device: torch.device
    ) -> None:
        """`fill`: (C,) in the units of the source images; `channels_first`: return NCHW."""
        self.plan = plan
        self.device = device
        self.channels_first = channels_first
        self.fill = fill.to(device=device, dtype=torch.float32)
        if channels_first:
            self.fill = self.fill[:, None, None]
            self._channels = torch.arange(len(fill), device=device)[None, :, None, None]
        shifts = plan.shifts
        if plan.mode == "crop":
            offsets_y, offsets_x = plan.margin + shifts[:, 0], plan.margin + shifts[:, 1]
        elif plan.mode == "canvas":
            offsets_y, offsets_x = -(plan.margin + shifts[:, 0]), -(plan.margin + shifts[:, 1])
        else:
            offsets_y, offsets_x = -shifts[:, 0], -shifts[:, 1]
        boundary = _BOUNDARY[plan.mode]
        (height, width), (src_h, src_w) = plan.input_size, plan.source_size
        self._rows = _axis_table(offsets_y, height, src_h, boundary, device)
        self._cols = _axis_table(offsets_x, width, src_w, boundary, device)
        self._fourier = plan.subpixel == "fourier" and not plan.is_integer
        self._bilinear = not self._fourier and not plan.is_integer
        self._uses_fill = boundary == "fill"
        if self._fourier:
            fy = torch.fft.fftfreq(height, device=device, dtype=torch.float64)
            fx = torch.fft.fftfreq(width, device=device, dtype=torch.float64)
            self._freq = (fy, fx)
            self._shift_t = torch.as_tensor(shifts, dtype=torch.float64, device=device)

    def __call__(
        self, source: torch.Tensor, probe_index: torch.Tensor, shift_index: torch.Tensor
    ) -> torch.Tensor:
        """Shifted images for pairs (probe_index[m], shift_index[m]).

        `source` is (B, Hs, Ws, C) float32, channels last. The result is written once, already
        in its final memory order: (M, C, H, W) contiguous when `channels_first`, else
        (M, H, W, C) contiguous (an NCHW view of it is channels_last).
        """
        if self._fourier:
            return self._fourier_shift(source, probe_index, shift_index)
        out = None
        for r_index, r_valid, r_weight in self._taps(self._rows, shift_index):
            for c_index, c_valid, c_weight in self._taps(self._cols, shift_index):
                tap = self._gather(source, probe_index, r_index, c_index)
                if self._uses_fill:
                    valid = self._spatial(r_valid[:, :, None] & c_valid[:, None, :])
                    tap = torch.where(valid, tap, self.fill)
                if r_weight is not None and c_weight is not None:
                    tap = tap * self._spatial(r_weight[:, :, None] * c_weight[:, None, :])
                out = tap if out is None else out + tap
        assert out is not None
        return out

    def _gather(
        self, source: torch.Tensor, probe: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor
    ) -> torch.Tensor:
        if self.channels_first:
            # All four dims indexed: the result comes out (M, C, H, W) in one pass.
            return source[
                probe[:, None, None, None],
                rows[:, None, :, None],
                cols[:, None, None, :],
                self._channels,
            ]
        return source[probe[:, None, None], rows[:, :, None], cols[:, None, :]]

    def _spatial(self, mask: torch.Tensor) -> torch.Tensor:
        """(M, H, W) -> broadcastable against the output layout."""
        return mask[:, None] if self.channels_first else mask[..., None]

    def _taps(
        self, table: _AxisTable, shift_index: torch.Tensor
    ) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
        first = (table.index0[shift_index], table.valid0[shift_index])
        if not self._bilinear:
            return [(*first, None)]
        w1 = table.weight1[shift_index]
        return [
            (*first, 1.0 - w1),
            (table.index1[shift_index], table.valid1[shift_index], w1),
        ]

    def _fourier_shift(
        self, source: torch.Tensor, probe_index: torch.Tensor, shift_index: torch.Tensor
    ) -> torch.Tensor:
        images = source[probe_index].permute(0, 3, 1, 2).to(torch.float64)  # (M, C, H, W)
        fy, fx = self._freq
        shift = self._shift_t[shift_index]
        phase = (
            fy[None, :, None] * shift[:, 0, None, None]
            + fx[None, None, :] * shift[:, 1, None, None]
        )
        ramp = torch.polar(torch.ones_like(phase), -2.0 * math.pi * phase)[:, None]
        shifted: torch.Tensor = torch.fft.ifft2(torch.fft.fft2(images) * ramp).real.float()
        return shifted if self.channels_first else shifted.permute(0, 2, 3, 1).contiguous()
