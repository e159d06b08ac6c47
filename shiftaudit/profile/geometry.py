"""Where a layer output's positions are: a map, a token sequence on a g x g grid, or neither.

A layer output F of spatial size h x w for an input of H x W has cumulative stride j = H / h,
integer and equal in both axes, else it is ``non_spatial`` (science.md, report 1.2). A rank-4
output is a map on its two spatial axes (NCHW: 2, 3; NHWC: 1, 2; the other order is tried
second). A rank-3 output whose last g^2 tokens, after at most 8 class or distillation tokens,
tile a g x g grid with H / g = W / g is a token map of stride H / g: (B, L, D) sequences, and
(B, D, g^2) flattened maps (which never carry class tokens).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

MAX_EXTRA_TOKENS = 8


@dataclass(frozen=True)
class Geometry:
    """How the positions of one tensor are laid out; ``stride`` is j = H / h."""

    kind: Literal["map", "tokens", "non_spatial"]
    stride: int | None = None
    dims: tuple[int, int] = (2, 3)  # map: the spatial axes (y, x)
    grid: tuple[int, int] = (0, 0)  # (h, w) of the positions
    extra: int = 0  # tokens: class / distillation tokens before the patches
    token_dim: int = 1  # tokens: the axis that enumerates tokens

    @property
    def spatial(self) -> bool:
        """Whether this tensor has positions on a grid of integer stride."""
        return self.kind != "non_spatial"


NON_SPATIAL = Geometry("non_spatial")


def geometry_of(shape: Sequence[int], *, size: tuple[int, int], layout: str) -> Geometry:
    """The geometry of a tensor of `shape` (batch first) in a model whose input is `size`."""
    height, width = size
    if len(shape) == 4:
        order = [(2, 3), (1, 2)] if layout == "NCHW" else [(1, 2), (2, 3)]
        for dims in order:
            h, w = int(shape[dims[0]]), int(shape[dims[1]])
            if h > 1 and w > 1 and height % h == 0 and width % w == 0 and height // h == width // w:
                return Geometry("map", height // h, dims, (h, w))
    if len(shape) == 3:
        # Fewest extra tokens wins, so a (B, D, L) flattened map is not misread as (B, L, D);
        # class tokens only ever prefix a (B, L, D) sequence.
        for extra in range(MAX_EXTRA_TOKENS + 1):
            for token_dim in (1, 2) if extra == 0 else (1,):
                side = math.isqrt(max(int(shape[token_dim]) - extra, 0))
                if side < 2 or side * side != int(shape[token_dim]) - extra:
                    continue
                if height % side == 0 and width % side == 0 and height // side == width // side:
                    return Geometry(
                        "tokens",
                        height // side,
                        grid=(side, side),
                        extra=extra,
                        token_dim=token_dim,
                    )
    return NON_SPATIAL


def positions(value: torch.Tensor, geometry: Geometry) -> torch.Tensor:
    """The part of `value` that lies on the grid: a map whole, a sequence without its extras."""
    if geometry.kind != "tokens" or geometry.extra == 0:
        return value
    length = value.shape[geometry.token_dim] - geometry.extra
    return value.narrow(geometry.token_dim, geometry.extra, length)


def grid_view(value: torch.Tensor, geometry: Geometry) -> tuple[torch.Tensor, tuple[int, int]]:
    """`value`'s grid positions with y and x on two axes of their own, and those two axes.

    A map is returned as it is; the patch tokens of a sequence are unflattened to g x g.
    """
    if geometry.kind == "map":
        return value, geometry.dims
    patches = positions(value, geometry)
    side = geometry.grid[0]
    axis = geometry.token_dim
    shape = (*patches.shape[:axis], side, side, *patches.shape[axis + 1 :])
    grid = patches.reshape(shape)
    return grid, (axis, axis + 1)


def from_grid_view(grid: torch.Tensor, like: torch.Tensor, geometry: Geometry) -> torch.Tensor:
    """Undo `grid_view`: the positions back in `like`'s layout, extra tokens taken from `like`."""
    if geometry.kind == "map":
        return grid
    patches = grid.flatten(geometry.token_dim, geometry.token_dim + 1)
    if geometry.extra == 0:
        return patches
    extras = like.narrow(geometry.token_dim, 0, geometry.extra).to(patches.dtype)
    return torch.cat([extras, patches], dim=geometry.token_dim)
