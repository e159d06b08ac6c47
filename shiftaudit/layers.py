"""Per-layer equivariance profile (science.md, "Per-layer equivariance").

For a layer output F at stride s = H / h and circular input shifts t that are multiples of s:
err(F, t) = ||F(roll_t x) - roll_{t/s} F(x)|| / ||F(x)|| (Frobenius, per probe), averaged over
probes and the shifts (s, 0), (0, s), (s, s). Token sequences whose last g*g tokens tile a g x g
grid (vision-transformer patches, after any class tokens) are treated as maps of stride H / g.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from .report import LayerEntry, LayerProfile
from .runtimes import Runtime

_MAX_EXTRA_TOKENS = 8


@dataclass(frozen=True)
class _Geometry:
    kind: Literal["map", "tokens", "non_spatial"]
    stride: int | None = None
    dims: tuple[int, int] = (2, 3)  # the spatial dims of a map
    grid: int = 0  # tokens: side of the patch grid
    extra: int = 0  # tokens: class/distillation tokens before the patches
    token_dim: int = 1  # tokens: (B, L, D) or, for a flattened map, (B, D, L)


def _geometry(shape: torch.Size, size: tuple[int, int], layout: str) -> _Geometry:
    height, width = size
    if len(shape) == 4:
        order = [(2, 3), (1, 2)] if layout == "NCHW" else [(1, 2), (2, 3)]
        for dims in order:
            h, w = shape[dims[0]], shape[dims[1]]
            if h > 1 and w > 1 and height % h == 0 and width % w == 0 and height // h == width // w:
                return _Geometry("map", height // h, dims)
    if len(shape) == 3:
        # Fewest extra tokens wins, so a (B, D, L) flattened map is not misread as (B, L, D);
        # class tokens only ever prefix a (B, L, D) sequence.
        for extra in range(_MAX_EXTRA_TOKENS + 1):
            for token_dim in (1, 2) if extra == 0 else (1,):
                grid = math.isqrt(max(shape[token_dim] - extra, 0))
                if grid < 2 or grid * grid != shape[token_dim] - extra:
                    continue
                if height % grid == 0 and width % grid == 0 and height // grid == width // grid:
                    return _Geometry(
                        "tokens", height // grid, grid=grid, extra=extra, token_dim=token_dim
                    )
    return _Geometry("non_spatial")


def _roll_output(value: torch.Tensor, geometry: _Geometry, t: tuple[int, int]) -> torch.Tensor:
    assert geometry.stride is not None
    shift = (t[0] // geometry.stride, t[1] // geometry.stride)
    if geometry.kind == "map":
        return torch.roll(value, shift, dims=geometry.dims)
    patches = _patch_part(value, geometry)
    if geometry.token_dim == 1:
        grid = patches.reshape(value.shape[0], geometry.grid, geometry.grid, value.shape[2])
        return torch.roll(grid, shift, dims=(1, 2)).reshape(patches.shape)
    grid = patches.reshape(value.shape[0], value.shape[1], geometry.grid, geometry.grid)
    return torch.roll(grid, shift, dims=(2, 3)).reshape(patches.shape)


def _patch_part(value: torch.Tensor, geometry: _Geometry) -> torch.Tensor:
    if geometry.kind != "tokens":
        return value
    return value[:, geometry.extra :] if geometry.token_dim == 1 else value[:, :, geometry.extra :]


def equivariance_profile(
    model: Runtime, inputs: torch.Tensor, *, layout: str, size: tuple[int, int]
) -> LayerProfile:
    """Profile every rank-3/4 intermediate output of `model` on `inputs` (model layout)."""
    count = int(inputs.shape[0])
    if model.layers_unavailable_reason is not None:
        return LayerProfile(
            available=False, reason=model.layers_unavailable_reason, probes=count, entries=[]
        )
    spatial = (2, 3) if layout == "NCHW" else (1, 2)
    _, reference = model.forward_with_layers(inputs)
    geometries = [_geometry(layer.value.shape, size, layout) for layer in reference]
    strides = sorted({g.stride for g in geometries if g.stride is not None})
    errors: list[list[torch.Tensor]] = [[] for _ in reference]
    cosines: list[list[torch.Tensor]] = [[] for _ in reference]
    used: dict[int, list[tuple[int, int]]] = {}
    for stride in strides:
        used[stride] = [(stride, 0), (0, stride), (stride, stride)]
        for t in used[stride]:
            _, shifted = model.forward_with_layers(torch.roll(inputs, t, dims=spatial))
            for k, (layer, geometry) in enumerate(zip(reference, geometries, strict=True)):
                if geometry.stride != stride:
                    continue
                expected = _roll_output(layer.value, geometry, t).reshape(count, -1).double()
                actual = _patch_part(shifted[k].value, geometry).reshape(count, -1).double()
                norm = expected.norm(dim=1)
                keep = norm > 0
                errors[k].append(((actual - expected).norm(dim=1) / norm)[keep])
                cosines[k].append(
                    torch.nn.functional.cosine_similarity(actual, expected, dim=1)[keep]
                )
    entries = []
    for k, (layer, geometry) in enumerate(zip(reference, geometries, strict=True)):
        err = torch.cat(errors[k]) if errors[k] else torch.zeros(0)
        cos = torch.cat(cosines[k]) if cosines[k] else torch.zeros(0)
        entries.append(
            LayerEntry(
                name=layer.name,
                op_type=layer.op_type,
                shape=list(layer.value.shape),
                kind=geometry.kind,
                stride=geometry.stride,
                shifts=used.get(geometry.stride, []) if geometry.stride else [],
                relative_error=float(err.mean()) if len(err) else None,
                relative_error_max=float(err.max()) if len(err) else None,
                cosine=float(cos.mean()) if len(cos) else None,
            )
        )
    return LayerProfile(available=True, reason=None, probes=count, entries=entries)
