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
Tables are built once per plan. On a CPU every integer shift is then a few block copies per
image (strided slices, `index_select` per axis where a boundary folds), since a crop, a roll or
a fill moves whole rows; on a GPU a batch of any (probe, shift) pairs is one gather kernel,
because a block copy per image would cost a kernel launch each.
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
    weight1: torch.Tensor  # (K, n) float32, one value per shift; weight of tap 0 is 1 - weight1
    valid0: torch.Tensor  # (K, n) bool; False: the tap reads the fill colour
    valid1: torch.Tensor


def _axis_table(
    offsets: np.ndarray, out_len: int, src_len: int, boundary: Boundary, device: torch.device
) -> _AxisTable:
    # Output position i reads source position i + o: tap 0 at i + floor(o), tap 1 one further,
    # tap 1 weighted o - floor(o). Both from o alone, so the weight is exactly the same at
    # every position of a shift (i + o rounded in float64 would move its last bits).
    whole = np.floor(offsets)
    base = np.arange(out_len)[None, :] + whole[:, None]  # (K, n)
    weight1 = np.repeat((offsets - whole)[:, None], out_len, axis=1)
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


# Beyond this many runs per axis (reflect and edge boundaries fold into many short runs),
# one index_select per axis costs less than a copy per run.
_MAX_RUNS = 4


@dataclass(frozen=True)
class _Runs:
    """One axis of one integer shift as runs: (out_start, length, source_start or None: fill)."""

    runs: tuple[tuple[int, int, int | None], ...]


def _axis_runs(index: np.ndarray, valid: np.ndarray) -> _Runs | torch.Tensor:
    """Runs of consecutive source indices or of fill, else the index vector for index_select."""
    # A run ends where validity changes or, inside the source, where the index does not step by 1.
    breaks = (valid[1:] != valid[:-1]) | (valid[1:] & (index[1:] != index[:-1] + 1))
    starts = [0, *(np.flatnonzero(breaks) + 1).tolist()]
    if len(starts) > _MAX_RUNS and valid.all():
        return torch.as_tensor(index, dtype=torch.int64)
    stops = [*starts[1:], len(index)]
    return _Runs(
        tuple(
            (start, stop - start, int(index[start]) if valid[start] else None)
            for start, stop in zip(starts, stops, strict=True)
        )
    )


class ShiftGenerator:
    """Turns source images into batches of shifted images: block copies on a CPU, one gather on
    a GPU (see the module docstring); both write exactly the same values."""

    def __init__(
        self,
        plan: ShiftPlan,
        *,
        fill: torch.Tensor,
        channels_first: bool,
        device: torch.device,
        copies: bool | None = None,
    ) -> None:
        """`fill`: (C,) in the units of the source images; `channels_first`: return NCHW;
        `copies`: block copies (default on a CPU) rather than one gather (default on a GPU)."""
        self.plan = plan
        self.device = device
        self.channels_first = channels_first
        self.copies = device.type != "cuda" if copies is None else copies
        self.fill = fill.to(device=device, dtype=torch.float32)
        self._fill_pixel = self.fill[:, None, None] if channels_first else self.fill
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
        if self.copies:
            # Per tap (0: floor, 1: floor + 1) and shift: how each axis is copied (a Fourier
            # plan copies its whole shifts only).
            taps = (0, 1) if self._bilinear else (0,)
            self._row_runs = [_tap_runs(self._rows, tap) for tap in taps]
            self._col_runs = [_tap_runs(self._cols, tap) for tap in taps]
            self._image_taps = _image_taps(self._rows, self._cols, bilinear=self._bilinear)
        self._memo: tuple[torch.Tensor, torch.Tensor] | None = None
        self._spectra_of: torch.Tensor | None = None
        self._spectrum: dict[tuple[_FourierKind, int], torch.Tensor] = {}
        self._moved: dict[tuple[int, int], torch.Tensor] = {}
        if self._fourier:
            # d = ceil(d) + phi, phi in (-1, 0]: the roll by ceil(d) is tap 0 of the tables.
            fractions = shifts - np.ceil(shifts)
            distinct, inverse = np.unique(fractions, axis=0, return_inverse=True)
            self._fraction_of: list[int] = inverse.reshape(-1).tolist()
            self._fraction_t = torch.as_tensor(distinct, dtype=torch.float64, device=device)
            self._fraction_kinds = _fourier_kinds(distinct)
            self._fraction_shared: list[bool] = (np.bincount(inverse.reshape(-1)) > 1).tolist()
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
        if self.copies:
            return self._copied(source, probe_index, shift_index)
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

    def _copied(
        self, source: torch.Tensor, probe_index: torch.Tensor, shift_index: torch.Tensor
    ) -> torch.Tensor:
        """The gather's result built from block copies, image by image, weighted as the gather is.

        A tap of weight 0 (tap 1 on an axis where the shift is whole) adds a zero to the
        gather's sum, which changes no value (at most the sign of a zero), so it is not copied;
        a tap of weight 1 is a plain copy. The taps left are summed in the gather's order, one
        image at a time, so that each is added while the image is still in cache.
        """
        images = self._oriented(source)
        probes, shifts = probe_index.tolist(), shift_index.tolist()
        out = torch.empty(
            (len(probes), *self._image_shape()), dtype=source.dtype, device=source.device
        )
        scratch = torch.empty_like(out[0]) if self._bilinear else out[0]
        for m, (probe, shift) in enumerate(zip(probes, shifts, strict=True)):
            for i, (r_tap, c_tap, scale) in enumerate(self._image_taps[shift]):
                self._copy_image(
                    scratch if i else out[m],
                    images[probe],
                    self._row_runs[r_tap][shift],
                    self._col_runs[c_tap][shift],
                    scale=scale,
                )
                if i:
                    out[m].add_(scratch)
        return out

    def _oriented(self, source: torch.Tensor) -> torch.Tensor:
        """The source in the output's channel order; one permuted copy per chunk of probes.

        Memoised by identity: the engine shifts one source tensor batch after batch.
        """
        if not self.channels_first:
            return source
        if self._memo is None or self._memo[0] is not source:
            self._memo = (source, source.permute(0, 3, 1, 2).contiguous())
        return self._memo[1]

    def _image_shape(self) -> tuple[int, int, int]:
        height, width = self.plan.input_size
        channels = int(self.fill.shape[0])
        return (channels, height, width) if self.channels_first else (height, width, channels)

    def _copy_image(
        self,
        out: torch.Tensor,
        image: torch.Tensor,
        rows: _Runs | torch.Tensor,
        cols: _Runs | torch.Tensor,
        *,
        scale: float | None = None,
    ) -> None:
        """Write one shifted image, times `scale` if given: a copy or a fill per (row run,
        column run)."""
        row_dim, col_dim = (1, 2) if self.channels_first else (0, 1)

        def put(block: torch.Tensor, values: torch.Tensor) -> None:
            if scale is None:
                block.copy_(values)
            else:
                torch.mul(values, scale, out=block)

        if isinstance(rows, torch.Tensor) or isinstance(cols, torch.Tensor):
            # A folding boundary: every tap is inside, so the two selects are the whole image.
            picked = image.index_select(row_dim, _as_index(rows, out.shape[row_dim]))
            torch.index_select(picked, col_dim, _as_index(cols, out.shape[col_dim]), out=out)
            if scale is not None:
                out.mul_(scale)
            return
        for r_start, r_length, r_source in rows.runs:
            band = out.narrow(row_dim, r_start, r_length)
            if r_source is None:
                put(band, self._fill_pixel.expand_as(band))
                continue
            source_band = image.narrow(row_dim, r_source, r_length)
            for c_start, c_length, c_source in cols.runs:
                block = band.narrow(col_dim, c_start, c_length)
                if c_source is None:
                    put(block, self._fill_pixel.expand_as(block))
                else:
                    put(block, source_band.narrow(col_dim, c_source, c_length))

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
        if self.copies:
            return self._fourier_from_spectra(source, probe_index, shift_index)
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

    def _fourier_from_spectra(
        self, source: torch.Tensor, probe_index: torch.Tensor, shift_index: torch.Tensor
    ) -> torch.Tensor:
        """The same band-limited shift, each pair a roll of the cheapest transform exact for it.

        The phase ramp of a whole shift w, exp(-2 pi i (fy wy + fx wx)), is the roll's own
        spectrum, so the shift by d = w + phi is the roll by w of the shift by phi; with w =
        ceil(d), every shift of a grid whose fractional parts agree shares one transform of
        each probe (all 16 fractional shifts of a half-pixel grid, three). Whole on one axis,
        phi's ramp is a 1-D ramp on the other, so one 1-D transform of each row (or column)
        does. A real image's spectrum is Hermitian, so rfft/irfft give the real part of the
        full transform's result (equal up to float64 rounding, far below float32's) at under
        half its cost, and a probe's transforms share one forward transform of each kind.
        """
        probes, shifts = probe_index.tolist(), shift_index.tolist()
        self._forget_spectra(source, probes)
        fractions = [self._fraction_of[shift] for shift in shifts]
        missing: dict[_FourierKind, dict[tuple[int, int], None]] = {}
        for probe, fraction in zip(probes, fractions, strict=True):
            kind = self._fraction_kinds[fraction]
            if kind != "whole" and (probe, fraction) not in self._moved:
                missing.setdefault(kind, {})[(probe, fraction)] = None
        for kind, keys in missing.items():
            moved = self._fourier_group(
                kind, source, [probe for probe, _ in keys], [fraction for _, fraction in keys]
            )
            for g, key in enumerate(keys):
                # One pass per transform: float64 -> float32 and into the output's layout.
                image = moved[g] if self.channels_first else moved[g].permute(1, 2, 0)
                self._moved[key] = image.to(torch.float32, memory_format=torch.contiguous_format)
        images = self._oriented(source)
        out = torch.empty(
            (len(probes), *self._image_shape()), dtype=torch.float32, device=source.device
        )
        for m, (probe, shift, fraction) in enumerate(zip(probes, shifts, fractions, strict=True)):
            whole = self._fraction_kinds[fraction] == "whole"
            moved = images[probe] if whole else self._moved[(probe, fraction)]
            self._copy_image(out[m], moved, self._row_runs[0][shift], self._col_runs[0][shift])
            if not whole and not self._fraction_shared[fraction]:
                del self._moved[(probe, fraction)]  # no other shift of the grid needs it
        return out

    def _fourier_group(
        self, kind: _FourierKind, source: torch.Tensor, probes: list[int], fractions: list[int]
    ) -> torch.Tensor:
        """(G, C, H, W) float64: each probe shifted by its fractional part, all of one kind."""
        height, width = self.plan.input_size
        fraction = self._fraction_t[fractions]
        dy, dx = fraction[:, 0, None], fraction[:, 1, None]
        spectra = [self._spectrum_of(kind, source, probe) for probe in probes]
        product = torch.empty(
            len(probes), *spectra[0].shape, dtype=spectra[0].dtype, device=spectra[0].device
        )
        if kind == "fractional":
            ramp = self._plane_ramp(dy, dx)
            for g, spectrum in enumerate(spectra):
                torch.mul(spectrum, ramp[g], out=product[g])
            plane: torch.Tensor = torch.fft.irfft2(product, s=(height, width))
            return plane
        # One axis fractional: a 1-D ramp along it.
        along_rows = kind == "fractional_y"
        length = height if along_rows else width
        frequency = torch.fft.rfftfreq(length, device=self.device, dtype=torch.float64)
        phase = frequency * (dy if along_rows else dx)
        ramp = torch.polar(torch.ones_like(phase), -2.0 * math.pi * phase)
        for g, spectrum in enumerate(spectra):
            torch.mul(spectrum, ramp[g][:, None] if along_rows else ramp[g], out=product[g])
        lines: torch.Tensor = torch.fft.irfft(product, n=length, dim=-2 if along_rows else -1)
        return lines

    def _plane_ramp(self, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
        """(G, H, W // 2 + 1): the 2-D ramp on the half spectrum, Hermitian where rfft needs it."""
        height, width = self.plan.input_size
        fy = self._freq[0]
        fx = torch.fft.rfftfreq(width, device=self.device, dtype=torch.float64)
        # The ramp is separable: two short phase vectors per pair and their outer product,
        # rather than a cosine and a sine per spectrum bin.
        ramp_y = torch.polar(torch.ones_like(fy * dy), -2.0 * math.pi * fy * dy)
        ramp_x = torch.polar(torch.ones_like(fx * dx), -2.0 * math.pi * fx * dx)
        if height % 2 == 0:
            # The full transform's real part keeps the Hermitian part of the phase ramp, which
            # differs from the ramp on the rows' Nyquist bin (fftfreq -0.5 for it and its own
            # mirror): cos(pi dy) there, and cos(pi (dy + dx)) at the corner bin. Columns need
            # nothing: irfft2 already keeps the Hermitian part along its last axis.
            ramp_y[:, height // 2] = torch.cos(math.pi * dy[:, 0]).to(ramp_y.dtype)
        ramp = ramp_y[:, :, None] * ramp_x[:, None, :]
        if height % 2 == 0 and width % 2 == 0:
            ramp[:, height // 2, -1] = torch.cos(math.pi * (dy + dx))[:, 0].to(ramp.dtype)
        return ramp

    def _spectrum_of(self, kind: _FourierKind, source: torch.Tensor, probe: int) -> torch.Tensor:
        """One probe's half spectrum in float64 for `kind`'s transform, made once: (C, H, W // 2
        + 1) for the 2-D and row-wise transforms, (C, H // 2 + 1, W) for the column-wise one."""
        key = (kind, probe)
        if key not in self._spectrum:
            image = source[probe].permute(2, 0, 1).to(torch.float64)
            if kind == "fractional":
                spectrum = torch.fft.rfft2(image)
            else:
                spectrum = torch.fft.rfft(image, dim=-2 if kind == "fractional_y" else -1)
            self._spectrum[key] = spectrum
        return self._spectrum[key]

    def _forget_spectra(self, source: torch.Tensor, probes: list[int]) -> None:
        """Drop the spectra and shifted probes no later batch needs.

        Batches come probe by probe in increasing order, so a probe below the batch's first
        is never asked for again: a chunk's spectra would not fit in memory.
        """
        if self._spectra_of is not source:
            self._spectra_of, self._spectrum, self._moved = source, {}, {}
        first = min(probes)
        self._spectrum = {key: v for key, v in self._spectrum.items() if key[1] >= first}
        self._moved = {key: v for key, v in self._moved.items() if key[0] >= first}


_FourierKind = Literal["whole", "fractional_y", "fractional_x", "fractional"]


def _fourier_kinds(shifts: np.ndarray) -> list[_FourierKind]:
    """Per shift, which axes are fractional (and so need a transform)."""
    whole = shifts == np.round(shifts)
    kinds: dict[tuple[bool, bool], _FourierKind] = {
        (True, True): "whole",
        (False, True): "fractional_y",
        (True, False): "fractional_x",
        (False, False): "fractional",
    }
    return [kinds[(bool(y), bool(x))] for y, x in whole]


def _image_taps(
    rows: _AxisTable, cols: _AxisTable, *, bilinear: bool
) -> list[list[tuple[int, int, float | None]]]:
    """Per shift, (row tap, column tap, scale) for each tap of non-zero weight, in the gather's
    order: the scale is the gather's float32 product of the two axes' weights, None where it is
    1 (a plain copy). An integer plan has the floor taps alone, as in `ShiftGenerator._taps`;
    a shift weighs every position alike (`_axis_table`)."""

    def weights(table: _AxisTable) -> list[list[tuple[int, np.float32]]]:
        w1 = table.weight1[:, 0].cpu().numpy()
        if not bilinear:
            return [[(0, np.float32(1.0))]] * len(w1)
        w0 = np.float32(1.0) - w1  # the gather's float32 1 - w1
        return [[(tap, w) for tap, w in ((0, w0[k]), (1, w1[k])) if w != 0] for k in range(len(w1))]

    def scale(r_weight: np.float32, c_weight: np.float32) -> float | None:
        product = float(r_weight * c_weight)
        return None if product == 1.0 else product

    return [
        [(r, c, scale(r_w, c_w)) for r, r_w in row_taps for c, c_w in col_taps]
        for row_taps, col_taps in zip(weights(rows), weights(cols), strict=True)
    ]


def _tap_runs(table: _AxisTable, tap: int) -> list[_Runs | torch.Tensor]:
    """Per shift, how one tap of one axis is copied (shifts with equal offsets share one)."""
    index = (table.index0 if tap == 0 else table.index1).cpu().numpy()
    valid = (table.valid0 if tap == 0 else table.valid1).cpu().numpy()
    known: dict[bytes, _Runs | torch.Tensor] = {}
    return [
        known.setdefault(key, _axis_runs(index[k], valid[k]))
        if (key := index[k].tobytes() + valid[k].tobytes()) not in known
        else known[key]
        for k in range(len(index))
    ]


def _as_index(axis: _Runs | torch.Tensor, length: int) -> torch.Tensor:
    """An axis's source index vector, whichever form it is kept in."""
    if isinstance(axis, torch.Tensor):
        return axis
    index = torch.empty(length, dtype=torch.int64)
    for start, run, source in axis.runs:
        assert source is not None  # fill runs only arise where the boundary is a fill
        index[start : start + run] = torch.arange(source, source + run)
    return index
