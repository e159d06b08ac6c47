"""What an audit costs, in forward passes of the model, known before anything runs.

    sweep  = P x E,  E = |T| (every shift; a canvas counts its positions) or 1 + 2 x pairs
    layers = p x L(s),  p = min(layers.probes, P), s = distinct strides (bounded below)
    total  = sweep + layers

P is the number of probes. The layer profile runs the model on its first p probes a fixed
number of times per distinct cumulative stride of the network
(`layer_profile_forward_passes`);
the stride count is unknown before the graph is read, so the estimate bounds it by the
strides a power-of-two network can have at this input, log2(min(H, W)) + 1. Tuning (timed
once per model and device, then cached) is not counted. Pure: it imports no torch, so the
service estimates an audit without loading the model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from shiftaudit.config import MAX_GRID_SHIFTS, AuditConfig
from shiftaudit.errors import ConfigError

# The strides bound used when the input size is unknown too (a 4096-pixel side).
_MAX_STRIDES = 13


@dataclass(frozen=True)
class AuditCost:
    """Forward passes of one audit, by stage."""

    probes: int
    evaluations_per_probe: int
    sweep_forward_passes: int
    layer_forward_passes: int

    @property
    def forward_passes(self) -> int:
        return self.sweep_forward_passes + self.layer_forward_passes


def layer_profile_forward_passes(*, probes: int, strides: int) -> int:
    """Upper bound on the layer profile's cost in model-forward equivalents for `probes`
    probes of a network with `strides` distinct strides: P (11 + 3 S).

    The deployed network: a reference pass and one per shift of the on-grid sets of every
    stride and the off-grid set (at most 3 S + 3); its torus variant: a reference and the 3
    off-grid passes; local aliasing: 3 runs in which each node runs once
    (`shiftaudit.profile.layer_profile` counts what it really spends).
    """
    return probes * (11 + 3 * strides)


def audit_cost(
    *, config: AuditConfig, probes: int, input_size: tuple[int, int] | None
) -> AuditCost:
    """The cost of auditing `probes` probes with `config` at `input_size` (None: unknown,
    which only a canvas sweep needs; ConfigError then)."""
    size = config.preprocess.input_size or input_size
    per_probe = config.sweep.evaluations_per_probe(size)
    if per_probe is None:
        raise ConfigError(
            "a canvas sweep's cost depends on the input size, which neither the config "
            "(preprocess.input_size) nor the model file declares"
        )
    profiled = min(config.layers.probes, probes) if config.layers.enabled else 0
    strides = _MAX_STRIDES if size is None else int(math.log2(min(size))) + 1
    return AuditCost(
        probes=probes,
        evaluations_per_probe=per_probe,
        sweep_forward_passes=probes * per_probe,
        layer_forward_passes=layer_profile_forward_passes(probes=profiled, strides=strides),
    )


def check_geometry(config: AuditConfig, input_size: tuple[int, int]) -> None:
    """ConfigError for what the config cannot do at this input size: a resize below it, a
    canvas larger than it or on a non-square input, or too many canvas positions."""
    height, width = input_size
    resize = config.preprocess.resize
    if resize is not None and resize < min(input_size):  # the layer profile resizes too
        raise ConfigError(f"preprocess.resize {resize} is smaller than the input size {input_size}")
    if config.sweep.mode != "canvas":
        return
    side = config.sweep.object_size or min(input_size) // 2
    if side > min(input_size):
        raise ConfigError(
            f"canvas object_size {side} must not exceed the input size {height}x{width}"
        )
    if (height - side) // 2 != (width - side) // 2:
        raise ConfigError("canvas needs a square input so that t = 0 is the centred object")
    count = config.sweep.shift_count(input_size)
    if config.sweep.sampling is None and count is not None and count > MAX_GRID_SHIFTS:
        raise ConfigError(
            f"the canvas has {count} positions, more than the {MAX_GRID_SHIFTS} evaluated "
            "exhaustively per probe; set sweep.sampling (random pairs) or a larger step"
        )
