"""The cost model (shiftaudit.cost) against the sweep the engine really builds."""

from __future__ import annotations

import pytest

from shiftaudit.config import AuditConfig
from shiftaudit.cost import audit_cost, check_geometry, layer_profile_forward_passes
from shiftaudit.errors import ConfigError
from shiftaudit.shifts import plan_shifts

SWEEPS = [
    {"mode": "circular", "max_shift": 0},
    {"mode": "circular", "max_shift": 4},
    {"mode": "zero", "max_shift": 5, "step": 2},
    {"mode": "crop", "max_shift": 7, "step": 3},
    {"mode": "reflect", "shifts": [[0.5, 0], [1, 1], [1, 1], [0, 0]]},
    {"mode": "canvas", "step": 4},
    {"mode": "canvas", "object_size": 10, "step": 3},
    {"mode": "canvas", "object_size": 31, "step": 1},
]


@pytest.mark.parametrize("sweep", SWEEPS)
@pytest.mark.parametrize("size", [(32, 32), (33, 33), (64, 64)])
def test_the_shift_count_is_the_number_of_shifts_the_engine_plans(sweep, size):
    config = AuditConfig.model_validate({"sweep": sweep})
    plan = plan_shifts(config.sweep, size)  # the engine's own construction, point by point
    assert config.sweep.shift_count(size) == plan.count


def test_an_audit_costs_its_sweep_and_its_layer_profile():
    config = AuditConfig.model_validate({"sweep": {"max_shift": 2}, "layers": {"probes": 3}})
    cost = audit_cost(config=config, probes=10, input_size=(32, 32))
    assert cost.evaluations_per_probe == 25
    assert cost.sweep_forward_passes == 250
    # 32 px: strides 1, 2, 4, 8, 16, 32 at most, so 6; the first 3 probes are profiled.
    assert cost.layer_forward_passes == layer_profile_forward_passes(probes=3, strides=6)
    assert cost.forward_passes == 250 + cost.layer_forward_passes
    sampled = AuditConfig.model_validate(
        {
            "sweep": {"max_shift": 100, "sampling": {"pairs_per_probe": 7}},
            "layers": {"enabled": False},
        }
    )
    cost = audit_cost(config=sampled, probes=10, input_size=None)
    assert (cost.evaluations_per_probe, cost.forward_passes) == (15, 150)


def test_a_canvas_of_unknown_size_cannot_be_costed():
    config = AuditConfig.model_validate({"sweep": {"mode": "canvas"}})
    with pytest.raises(ConfigError, match="depends on the input size"):
        audit_cost(config=config, probes=1, input_size=None)
    assert audit_cost(config=config, probes=1, input_size=(16, 16)).evaluations_per_probe == 81


@pytest.mark.parametrize(
    ("config", "size", "message"),
    [
        ({"preprocess": {"resize": 20}}, (32, 32), "smaller than the input size"),
        ({"sweep": {"mode": "canvas", "object_size": 40}}, (32, 32), "must not exceed"),
        ({"sweep": {"mode": "canvas"}}, (32, 48), "square input"),
        ({"sweep": {"mode": "canvas", "object_size": 8}}, (96, 96), "7921 positions"),
    ],
)
def test_geometry_the_input_cannot_take_is_refused(config, size, message):
    with pytest.raises(ConfigError, match=message):
        check_geometry(AuditConfig.model_validate(config), size)
