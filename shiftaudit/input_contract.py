"""What a classifier declares about its input and output, and checking a config against it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from shiftaudit.errors import ModelError

__all__ = ["DeclaredInput", "check_input_shape", "declared_input", "shape_str"]


@dataclass(frozen=True)
class DeclaredInput:
    """What the model itself declares about its input and output; ``None`` where it does not."""

    layout: Literal["NCHW", "NHWC"] | None
    channels: int | None
    height: int | None
    width: int | None
    num_classes: int | None
    input_name: str | None


def shape_str(layout: str, c: int | None, h: int | None, w: int | None) -> str:
    dims = ["N", c, h, w] if layout == "NCHW" else ["N", h, w, c]
    return "(" + ", ".join("?" if d is None else str(d) for d in dims) + f") [{layout}]"


def declared_input(
    dims: list[int | None] | None, out: list[int | None] | None, name: str | None
) -> DeclaredInput:
    """Infer the layout from a rank-4 shape whose channel dim is 1 or 3 and the other is not."""
    layout: Literal["NCHW", "NHWC"] | None = None
    c = h = w = None
    if dims is not None and len(dims) == 4:
        first, last = dims[1] in (1, 3), dims[3] in (1, 3)
        if first and not last:
            layout, c, h, w = "NCHW", dims[1], dims[2], dims[3]
        elif last and not first:
            layout, c, h, w = "NHWC", dims[3], dims[1], dims[2]
    while out is not None and len(out) > 2 and out[-1] == 1:  # as __call__ squeezes the logits
        out = out[:-1]
    return DeclaredInput(layout, c, h, w, out[-1] if out else None, name)


def check_input_shape(
    declared: DeclaredInput, *, layout: str, channels: int, height: int, width: int
) -> None:
    """Raise ModelError when a static dimension the model declares contradicts the config."""
    if layout not in ("NCHW", "NHWC"):
        raise ModelError(f"input layout must be 'NCHW' or 'NHWC', not {layout!r}")
    pairs = [(declared.channels, channels), (declared.height, height), (declared.width, width)]
    mismatch = declared.layout not in (None, layout) or any(d not in (None, g) for d, g in pairs)
    if mismatch:
        d = declared
        raise ModelError(
            f"model expects input {shape_str(d.layout or layout, d.channels, d.height, d.width)} "
            f"but the config gives {shape_str(layout, channels, height, width)}"
        )
