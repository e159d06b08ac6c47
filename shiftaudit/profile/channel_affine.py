"""Per-channel affine layers (inference batch norms): their shift errors follow from their input's.

A layer y = a_c x + b_c, with a scale and an offset per channel c on an axis that is not a
spatial one, commutes with every ideal shift: T_d is linear and keeps a constant map as it is
(a constant has only the DC bin, whose ramp is 1), so

    T_d y = a (T_d x) + b,    y(roll_t input) - T_d y = a (x(roll_t input) - T_d x),

    ||y_s - T_d y||^2 = sum_c a_c^2 ||x_s,c - T_d x_c||^2.

The per-channel residual powers of the input's own comparison therefore give the layer's
distance, and a (T_d x) + b its ideal shift, without a Fourier transform of its own: these are
the same numbers as the direct computation, to float32 rounding. The profile uses this for
fractional d only; a whole d is a roll, which rounds nothing. In a network exported with
torch.export every convolution is followed by such a batch norm (ONNX exporters fold them
into the convolution), and each one would otherwise cost as many transforms as its
convolution.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .ideal_shift import distances_of

CHANNEL_AXIS = 1  # batch norm's axis, in ONNX and in aten alike


@dataclass(frozen=True)
class ChannelAffine:
    """y = scale_c x + offset_c on axis 1 of the layer `source` (float64, one value a channel)."""

    source: str
    scale: torch.Tensor
    offset: torch.Tensor

    @staticmethod
    def of_batch_norm(
        source: str,
        *,
        weight: torch.Tensor | None,
        bias: torch.Tensor | None,
        mean: torch.Tensor,
        var: torch.Tensor,
        eps: float,
    ) -> ChannelAffine:
        """An inference batch norm: a = w / sqrt(var + eps), b = bias - mean a."""
        var = var.detach().double().reshape(-1)
        scale = torch.rsqrt(var + eps)
        if weight is not None:
            scale = scale * weight.detach().double().reshape(-1)
        offset = -mean.detach().double().reshape(-1) * scale
        if bias is not None:
            offset = offset + bias.detach().double().reshape(-1)
        return ChannelAffine(source, scale, offset)

    def apply(self, value: torch.Tensor) -> torch.Tensor:
        """a value + b, on axis 1, in `value`'s dtype."""
        shape = [1] * value.dim()
        shape[CHANNEL_AXIS] = -1
        scale = self.scale.to(value.device, value.dtype).reshape(shape)
        offset = self.offset.to(value.device, value.dtype).reshape(shape)
        return torch.addcmul(offset, value, scale)

    def distances(self, powers: torch.Tensor) -> torch.Tensor:
        """||y_s - T_d y|| per probe from the input's residual powers per (probe, channel):
        sqrt(sum_c a_c^2 ||x_s,c - T_d x_c||^2), float64."""
        return distances_of(powers.double() * self.scale.to(powers.device).square())
