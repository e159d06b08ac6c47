"""The layer profile of report 1.2 on networks whose behaviour under shifts is known.

Every number is checked against its definition in science.md ("Per-layer equivariance,
aliasing and receptive fields"), by analysis where the answer is known exactly, and against
a naive implementation written here (torch.roll, numpy's FFT, the network run module by
module) where it is not.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from shiftaudit.profile.geometry import geometry_of
from shiftaudit.profile.ideal_shift import ideal_shift


def _numpy_ideal_shift(grid: np.ndarray, d: tuple[float, float]) -> np.ndarray:
    """T_d over the last two axes, straight from the definition, with numpy's FFT."""
    h, w = grid.shape[-2:]
    ky = np.fft.fftfreq(h)[:, None]  # k_y / h over the signed frequencies
    kx = np.fft.fftfreq(w)[None, :]
    ramp = np.exp(-2j * np.pi * (ky * d[0] + kx * d[1]))
    return np.real(np.fft.ifft2(np.fft.fft2(grid) * ramp))


@pytest.mark.parametrize("d", [(1, 0), (0, -2), (3, 5)])
def test_the_ideal_shift_is_a_roll_for_whole_samples(d):
    value = torch.randn(2, 3, 8, 6)
    geometry = geometry_of(value.shape, size=(16, 12), layout="NCHW")
    assert torch.equal(ideal_shift(value, d, geometry), torch.roll(value, d, dims=(2, 3)))
    # And the Fourier definition agrees with the roll up to rounding.
    fourier = _numpy_ideal_shift(value.double().numpy(), d)
    np.testing.assert_allclose(fourier, torch.roll(value, d, dims=(2, 3)).numpy(), atol=1e-6)


@pytest.mark.parametrize("d", [(0.5, 0), (0, 0.5), (0.5, 0.5), (0.25, -1.5)])
def test_the_ideal_shift_is_the_band_limited_fourier_shift(d):
    value = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    geometry = geometry_of(value.shape, size=(16, 16), layout="NCHW")
    expected = _numpy_ideal_shift(value.numpy(), d)
    np.testing.assert_allclose(ideal_shift(value, d, geometry).numpy(), expected, atol=1e-12)
    # Two half steps make a whole one, for a map without energy at the Nyquist frequency.
    smooth = torch.nn.functional.avg_pool2d(
        torch.randn(1, 1, 16, 16, dtype=torch.float64), 2
    )  # 8 x 8, still random; remove its Nyquist row and column to make the test exact
    spectrum = torch.fft.fft2(smooth)
    spectrum[..., 4, :] = 0
    spectrum[..., :, 4] = 0
    smooth = torch.fft.ifft2(spectrum).real
    g = geometry_of(smooth.shape, size=(16, 16), layout="NCHW")
    twice = ideal_shift(ideal_shift(smooth, (0.5, 0.5), g), (0.5, 0.5), g)
    torch.testing.assert_close(twice, torch.roll(smooth, (1, 1), dims=(2, 3)))


def test_the_ideal_shift_of_tokens_moves_the_patches_and_keeps_the_class_token():
    patches = torch.randn(2, 4, 4, 5, dtype=torch.float64)  # (B, g, g, D)
    cls = torch.randn(2, 1, 5, dtype=torch.float64)
    tokens = torch.cat([cls, patches.reshape(2, 16, 5)], dim=1)  # (B, 1 + g^2, D)
    geometry = geometry_of(tokens.shape, size=(16, 16), layout="NCHW")
    assert (geometry.kind, geometry.stride, geometry.extra) == ("tokens", 4, 1)
    shifted = ideal_shift(tokens, (0.5, -1.0), geometry)
    torch.testing.assert_close(shifted[:, :1], cls)
    expected = _numpy_ideal_shift(patches.permute(0, 3, 1, 2).numpy(), (0.5, -1.0))
    np.testing.assert_allclose(
        shifted[:, 1:].reshape(2, 4, 4, 5).permute(0, 3, 1, 2).numpy(), expected, atol=1e-12
    )
    # A flattened map (B, D, g^2) is a token grid too, with no class token.
    flat = patches.permute(0, 3, 1, 2).reshape(2, 5, 16)
    g = geometry_of(flat.shape, size=(16, 16), layout="NCHW")
    assert (g.kind, g.token_dim, g.extra) == ("tokens", 2, 0)
    np.testing.assert_allclose(
        ideal_shift(flat, (0.5, -1.0), g).reshape(2, 5, 4, 4).numpy(), expected, atol=1e-12
    )


def test_the_ideal_shift_of_an_nhwc_map_moves_its_spatial_axes():
    value = torch.randn(2, 8, 8, 3, dtype=torch.float64)
    geometry = geometry_of(value.shape, size=(16, 16), layout="NHWC")
    assert geometry.dims == (1, 2)
    expected = _numpy_ideal_shift(value.permute(0, 3, 1, 2).numpy(), (0.5, 0.0))
    np.testing.assert_allclose(
        ideal_shift(value, (0.5, 0.0), geometry).permute(0, 3, 1, 2).numpy(), expected, atol=1e-12
    )
