"""Every shift family against an independent reference built from plain torch ops."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from shiftaudit.config import SweepConfig
from shiftaudit.errors import ConfigError
from shiftaudit.shifts import ShiftGenerator, plan_shifts

SIZE = (12, 10)


def _source(batch=3, size=SIZE, seed=0):
    return torch.rand(batch, size[0], size[1], 3, generator=torch.Generator().manual_seed(seed))


def _all_pairs(plan, batch):
    probe = torch.arange(batch).repeat_interleave(plan.count)
    shift = torch.arange(plan.count).repeat(batch)
    return probe, shift


def _generate(plan, source, fill=(0, 0, 0)):
    """All pairs, in both output layouts (which must agree), as (B, K, H, W, C)."""
    probe, shift = _all_pairs(plan, source.shape[0])
    outputs = []
    for channels_first in (False, True):
        gen = ShiftGenerator(
            plan, fill=_fill(fill), channels_first=channels_first, device=torch.device("cpu")
        )
        out = gen(source, probe, shift)
        assert out.is_contiguous()
        outputs.append(out.permute(0, 2, 3, 1) if channels_first else out)
    assert torch.equal(outputs[0], outputs[1])
    return outputs[0].reshape(source.shape[0], plan.count, *plan.input_size, 3)


def _fill(colour):
    return torch.tensor(colour, dtype=torch.float32) / 255.0


def _padded_window(source, dy, dx, pad_mode, reach, fill=0.0):
    """Shift by padding `reach` on every side with torch's own padding, then cropping."""
    nchw = source.permute(0, 3, 1, 2)
    kwargs = {"value": fill} if pad_mode == "constant" else {}
    padded = F.pad(nchw, (reach, reach, reach, reach), mode=pad_mode, **kwargs)
    h, w = nchw.shape[-2:]
    window = padded[..., reach - dy : reach - dy + h, reach - dx : reach - dx + w]
    return window.permute(0, 2, 3, 1)


def test_grid_contains_zero_and_adjacent_pairs():
    plan = plan_shifts(SweepConfig(max_shift=2, step=1), SIZE)
    assert plan.count == 25
    assert tuple(plan.shifts[plan.zero_index]) == (0.0, 0.0)
    # 5x5 grid: 4 horizontal neighbours per row * 5 rows, and the same vertically.
    assert len(plan.adjacent) == 40
    for a, b in plan.adjacent:
        assert np.abs(plan.shifts[b] - plan.shifts[a]).sum() == 1


def test_circular_is_torch_roll():
    plan = plan_shifts(SweepConfig(mode="circular", max_shift=5), SIZE)
    source = _source()
    out = _generate(plan, source)
    for k, (dy, dx) in enumerate(plan.shifts.astype(int)):
        expected = torch.roll(source, (int(dy), int(dx)), dims=(1, 2))
        assert torch.equal(out[:, k], expected)


@pytest.mark.parametrize(("mode", "pad_mode"), [("reflect", "reflect"), ("edge", "replicate")])
def test_reflect_and_edge_match_torch_padding(mode, pad_mode):
    plan = plan_shifts(SweepConfig(mode=mode, max_shift=4), SIZE)
    source = _source()
    out = _generate(plan, source)
    for k, (dy, dx) in enumerate(plan.shifts.astype(int)):
        assert torch.equal(out[:, k], _padded_window(source, int(dy), int(dx), pad_mode, 4))


def test_zero_fills_with_the_pixel_space_colour():
    plan = plan_shifts(SweepConfig(mode="zero", max_shift=3), SIZE)
    source = _source()
    out = _generate(plan, source, fill=(255, 0, 51))
    colour = torch.tensor([1.0, 0.0, 0.2])
    for k, (dy, dx) in enumerate(plan.shifts.astype(int)):
        for c in range(3):
            expected = _padded_window(
                source[..., c : c + 1], int(dy), int(dx), "constant", 3, fill=float(colour[c])
            )
            assert torch.allclose(out[:, k, ..., c : c + 1], expected)


def test_reflect_beyond_the_image_size_keeps_folding():
    plan = plan_shifts(SweepConfig(mode="reflect", shifts=[(15, -13)]), (6, 5))
    source = _source(size=(6, 5))
    out = _generate(plan, source)
    k = int(np.flatnonzero((plan.shifts == (15, -13)).all(1))[0])
    # numpy's reflect padding is the independent reference here.
    ref = np.pad(source.numpy(), ((0, 0), (20, 20), (20, 20), (0, 0)), mode="reflect")
    expected = ref[:, 20 - 15 : 20 - 15 + 6, 20 + 13 : 20 + 13 + 5]
    assert np.array_equal(out[:, k].numpy(), expected)


def test_crop_reads_the_window_at_offset_r_plus_t():
    plan = plan_shifts(SweepConfig(mode="crop", max_shift=3), (8, 8))
    assert plan.source_size == (14, 14)
    source = _source(size=(14, 14))
    out = _generate(plan, source)
    for k, (dy, dx) in enumerate(plan.shifts.astype(int)):
        assert torch.equal(out[:, k], source[:, 3 + dy : 3 + dy + 8, 3 + dx : 3 + dx + 8])


def test_canvas_pastes_the_object_at_every_grid_position():
    plan = plan_shifts(SweepConfig(mode="canvas", object_size=4, step=2), (10, 10))
    assert plan.source_size == (4, 4)
    tops = sorted({int(y) + plan.margin for y in plan.shifts[:, 0]})
    assert tops == [1, 3, 5]  # centre 3, step 2, inside 0..6
    source = _source(size=(4, 4))
    out = _generate(plan, source, fill=(0, 0, 255))
    for k, (dy, dx) in enumerate(plan.shifts.astype(int)):
        top, left = plan.margin + dy, plan.margin + dx
        expected = torch.zeros(3, 10, 10, 3)
        expected[..., 2] = 1.0
        expected[:, top : top + 4, left : left + 4] = source
        assert torch.equal(out[:, k], expected)


def test_bilinear_half_pixel_is_the_mean_of_neighbours():
    plan = plan_shifts(SweepConfig(mode="circular", shifts=[(0.5, 0.0), (0.0, -0.5)]), SIZE)
    source = _source()
    out = _generate(plan, source)
    down = (source + torch.roll(source, 1, dims=1)) / 2
    left = (source + torch.roll(source, -1, dims=2)) / 2
    assert torch.allclose(out[:, 1], down, atol=1e-6)
    assert torch.allclose(out[:, 2], left, atol=1e-6)
    assert torch.equal(out[:, 0], source)


def test_a_bilinear_shift_weighs_every_position_alike():
    """Tap 1 of output i reads source i + floor(o), weighted o - floor(o), at every i: the
    weight is the shift's, not i + o rounded (which moves its last bits with i: for the first
    shift here, from row 11 on in float32)."""
    shifts = [(2.9939839832950392, 0.1), (0.1, -0.3), (-1.25, 2.7), (1 / 3, 0.0)]
    plan = plan_shifts(SweepConfig(mode="circular", shifts=shifts), SIZE)
    generator = ShiftGenerator(
        plan, fill=_fill((0, 0, 0)), channels_first=False, device=torch.device("cpu")
    )
    for axis, table in ((0, generator._rows), (1, generator._cols)):
        offsets = -plan.shifts[:, axis]
        expected = torch.tensor(offsets - np.floor(offsets), dtype=torch.float32)
        assert torch.equal(table.weight1, expected[:, None].expand_as(table.weight1))
        base = np.arange(SIZE[axis])[None, :] + np.floor(offsets)[:, None]
        assert torch.equal(table.index0, torch.as_tensor(np.mod(base, SIZE[axis]).astype(np.int64)))


def test_fourier_integer_shift_is_a_roll_and_preserves_energy():
    plan = plan_shifts(
        SweepConfig(mode="circular", subpixel="fourier", shifts=[(2, -3), (0.5, 0.25)]), SIZE
    )
    source = _source()
    out = _generate(plan, source)
    assert torch.allclose(out[:, 1], torch.roll(source, (2, -3), dims=(1, 2)), atol=1e-5)
    # A fractional Fourier shift keeps the mean exactly and differs from bilinear.
    assert torch.allclose(out[:, 2].mean(), source.mean(), atol=1e-6)
    bilinear = _generate(plan_shifts(SweepConfig(shifts=[(0.5, 0.25)]), SIZE), source)
    assert not torch.allclose(out[:, 2], bilinear[:, 1], atol=1e-3)


def test_subset_of_pairs_is_generated_in_one_call():
    plan = plan_shifts(SweepConfig(max_shift=2), SIZE)
    source = _source()
    gen = ShiftGenerator(
        plan, fill=_fill((0, 0, 0)), channels_first=False, device=torch.device("cpu")
    )
    probe = torch.tensor([2, 0, 1])
    shift = torch.tensor([0, 24, 7])
    out = gen(source, probe, shift)
    for m in range(3):
        dy, dx = plan.shifts[int(shift[m])].astype(int)
        assert torch.equal(out[m], torch.roll(source[int(probe[m])], (int(dy), int(dx)), (0, 1)))


def test_bad_sweeps_are_refused_with_reasons():
    with pytest.raises(ValueError, match="fourier"):
        SweepConfig(mode="zero", subpixel="fourier")
    # Refused when the config is made (so at submit time), and by the engine for a config
    # that bypassed validation.
    with pytest.raises(ValueError, match="sampling"):
        SweepConfig(max_shift=40)
    with pytest.raises(ConfigError, match="sampling"):
        plan_shifts(SweepConfig.model_construct(max_shift=40), (100, 100))
    with pytest.raises(ConfigError, match="object_size"):
        plan_shifts(SweepConfig(mode="canvas", object_size=20), (10, 10))


@pytest.mark.parametrize(
    "sweep",
    [
        {"mode": "circular", "max_shift": 5},
        {"mode": "zero", "max_shift": 4, "fill": (255, 0, 51)},
        {"mode": "reflect", "max_shift": 4},
        {"mode": "reflect", "shifts": [(15, -13), (-7, 9)]},
        {"mode": "edge", "max_shift": 4},
        {"mode": "crop", "max_shift": 3},
        {"mode": "canvas", "object_size": 4, "step": 2, "fill": (0, 0, 255)},
        {"mode": "circular", "shifts": [(0.5, 0.0), (-1.25, 2.75), (0.1, -0.3)]},
        # Whole on one axis or both: the copies leave out the taps of weight 0.
        {"mode": "zero", "shifts": [(0.5, -3), (-1.25, 2.75), (2, 1), (0, 0.5)], "fill": (9, 9, 9)},
        {"mode": "reflect", "shifts": [(0.5, -3.5), (6.25, 2.75)]},
        {"mode": "edge", "shifts": [(0.5, -3.5), (-6.25, 2.75)]},
        {"mode": "crop", "shifts": [(0.5, -2.5), (-1.25, 2.75), (1, 0), (0, -1.5)]},
    ],
    ids=lambda sweep: "-".join(f"{v}" for v in sweep.values())[:40],
)
@pytest.mark.parametrize("channels_first", [False, True])
def test_block_copies_equal_the_gather_bit_for_bit(sweep, channels_first):
    """The copies (CPU default) against the 4-D gather they replaced, which the GPU still runs."""
    size = (10, 10) if sweep["mode"] == "canvas" else SIZE
    plan = plan_shifts(SweepConfig(**sweep), size)
    source = _source(batch=4, size=plan.source_size, seed=3)
    # Every pair, then a shuffled subset with repeats, as random-pair sampling draws them.
    probe, shift = _all_pairs(plan, 4)
    order = torch.randperm(len(probe), generator=torch.Generator().manual_seed(1))[:23]
    fill = _fill(sweep.get("fill", (0, 0, 0)))
    for probes, shifts in ((probe, shift), (probe[order], shift[order])):
        outputs = [
            ShiftGenerator(
                plan,
                fill=fill,
                channels_first=channels_first,
                device=torch.device("cpu"),
                copies=copies,
            )(source, probes, shifts)
            for copies in (True, False)
        ]
        assert outputs[0].is_contiguous()
        assert outputs[0].shape == outputs[1].shape
        assert torch.equal(outputs[0], outputs[1])


def test_the_cpu_default_is_block_copies():
    plan = plan_shifts(SweepConfig(mode="zero", max_shift=1), SIZE)
    gen = ShiftGenerator(
        plan, fill=_fill((0, 0, 0)), channels_first=True, device=torch.device("cpu")
    )
    assert gen.copies


# Whole, fractional on both axes, and whole on one axis only (each way round).
_FOURIER_SHIFTS = [(0.5, 0.25), (-1.75, 3.5), (2, -3), (1, 0.5), (-0.25, -2), (0, 0.5), (3.5, 0)]


def _numpy_fourier_shift(image, dy, dx):
    """Real part of the full complex transform times exp(-2 pi i (fy dy + fx dx)), per channel."""
    fy = np.fft.fftfreq(image.shape[0])[:, None]
    fx = np.fft.fftfreq(image.shape[1])[None, :]
    ramp = np.exp(-2j * np.pi * (fy * dy + fx * dx))
    return np.stack(
        [np.fft.ifft2(np.fft.fft2(image[..., c]) * ramp).real for c in range(image.shape[-1])], -1
    )


@pytest.mark.parametrize("size", [SIZE, (9, 11)], ids=["even", "odd"])
@pytest.mark.parametrize("channels_first", [False, True])
def test_fourier_shifts_match_the_full_transform_whatever_the_pair_order(channels_first, size):
    """The CPU path (rolls for whole shifts, 1-D transforms where one axis is whole, half
    spectra) and the GPU's full complex transform against numpy's full transform: equal up to
    float64 rounding, whatever order the pairs come in; whole shifts are exactly the roll."""
    plan = plan_shifts(
        SweepConfig(mode="circular", subpixel="fourier", shifts=_FOURIER_SHIFTS), size
    )
    source = _source(batch=4, size=size, seed=5)
    probe, shift = _all_pairs(plan, 4)
    expected = torch.stack(
        [
            torch.from_numpy(
                _numpy_fourier_shift(source[p].double().numpy(), *plan.shifts[k])
            ).float()
            for p, k in zip(probe.tolist(), shift.tolist(), strict=True)
        ]
    )
    order = torch.randperm(len(probe), generator=torch.Generator().manual_seed(2))
    whole = [k for k, (dy, dx) in enumerate(plan.shifts) if dy == round(dy) and dx == round(dx)]
    assert len(whole) == 2  # (0, 0) and (2, -3)
    for pairs in (slice(None), order):
        probes, shifts = probe[pairs], shift[pairs]
        for copies in (True, False):
            out = ShiftGenerator(
                plan,
                fill=_fill((0, 0, 0)),
                channels_first=channels_first,
                device=torch.device("cpu"),
                copies=copies,
            )(source, probes, shifts)
            assert out.is_contiguous()
            channels_last = out.permute(0, 2, 3, 1) if channels_first else out
            assert torch.allclose(channels_last, expected[pairs], atol=1e-6, rtol=0)
            if copies:
                for m, (p, k) in enumerate(zip(probes.tolist(), shifts.tolist(), strict=True)):
                    if k in whole:
                        roll = torch.roll(source[p], tuple(int(v) for v in plan.shifts[k]), (0, 1))
                        assert torch.equal(channels_last[m], roll)
        assert not torch.allclose(expected[pairs], source[probes], atol=1e-3)


@pytest.mark.parametrize("subpixel", ["bilinear", "fourier"])
def test_a_pair_is_shifted_alike_whatever_batch_it_falls_in(subpixel):
    """The engine reduces a probe the same way in any shard and at any batch size, so a pair's
    image may not depend on its batch: a Fourier transform made once and rolled for several
    shifts (kept between batches) equals the one made afresh, bit for bit."""
    shifts = [(dy / 2, dx / 2) for dy in range(-2, 3) for dx in range(-2, 3)]
    plan = plan_shifts(SweepConfig(mode="circular", shifts=shifts, subpixel=subpixel), SIZE)
    source = _source(batch=3, seed=7)
    probe, shift = _all_pairs(plan, 3)

    def batched(size: int) -> torch.Tensor:
        gen = ShiftGenerator(
            plan, fill=_fill((0, 0, 0)), channels_first=True, device=torch.device("cpu")
        )
        return torch.cat(
            [
                gen(source, probe[s : s + size], shift[s : s + size])
                for s in range(0, len(probe), size)
            ]
        )

    alone = batched(1)
    for size in (4, 7, len(probe)):
        assert torch.equal(batched(size), alone)
    # Every pair afresh: a generator per pair keeps nothing from an earlier one.
    for m in (0, 13, 27, 52, len(probe) - 1):
        gen = ShiftGenerator(
            plan, fill=_fill((0, 0, 0)), channels_first=True, device=torch.device("cpu")
        )
        assert torch.equal(gen(source, probe[m : m + 1], shift[m : m + 1])[0], alone[m])
