"""The corner experiment: position enters at a dense head, and not through a global pool."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from shiftaudit.corner import CANVAS, OBJECT, TRAIN_POSITIONS, corner_lines, run_corner_experiment
from shiftaudit.report import Report
from shiftaudit_cli.main import parser_for


@pytest.mark.slow
def test_the_corner_experiment_at_a_fixed_seed(tmp_path):
    result = run_corner_experiment(tmp_path, seed=0)
    dense, gap = result.dense_head, result.circular_gap
    # Circular padding and a global pool: the object is recognised the same everywhere.
    assert np.array(gap.agreement).shape == (7, 7)
    assert all(value == 1.0 for row in gap.agreement for value in row)
    # The dense head recognises objects where it saw them, and not in the opposite corner.
    assert dense.train_accuracy >= 0.95
    assert dense.top_left_accuracy >= 0.95
    assert dense.bottom_right_accuracy <= 0.75
    # The findings say why.
    (leak,) = dense.findings.position_leaks
    assert leak.op_type == "aten.linear.default"
    assert leak.map_size == (8, 8)
    assert leak.detail == "dense head on a 8x8 map"
    assert gap.findings.position_leaks == []
    assert [pool.map_size for pool in gap.findings.global_pools] == [(CANVAS, CANVAS)]
    # The files: reports that validate and carry the same numbers, and the two plots.
    for run in (dense, gap):
        report = Report.model_validate_json(run.report.read_text())
        assert report.mode == "canvas"
        assert report.position_map is not None
        assert report.position_map.accuracy == run.accuracy
        assert report.position_map.positions_y == run.positions
        assert report.layers.findings == run.findings
        with Image.open(run.plot) as plot:
            assert plot.format == "PNG"
            assert plot.width > 7 * 40
    lines = corner_lines(result)
    assert lines[0].startswith("dense_head: accuracy ")
    assert any("position leaks at" in line for line in lines)


def test_the_quadrants_are_the_object_positions_of_the_training_set():
    # Training corners 0..8: the object's 8 pixels stay inside the top-left 16 x 16.
    assert TRAIN_POSITIONS - 1 + OBJECT == CANVAS // 2


@pytest.mark.parametrize(
    ("argv", "which"), [(["example"], "aliasing"), (["example", "corner"], "corner")]
)
def test_the_example_command_takes_which_example(argv, which):
    assert parser_for(argv).parse_args(argv).which == which
