"""Batch-size and memory-format measurement; the runtime choice and the cache that keeps it are
tested in test_runtime_choice.py."""

from __future__ import annotations

from shiftaudit.runtimes import load_runtime
from shiftaudit.tuning import measure

from .nets import AliasingNet, export_program


def test_measure_returns_a_timed_setting(tmp_path):
    model = load_runtime(export_program(AliasingNet(), tmp_path / "m.pt2"))
    tuning = measure(model, size=(16, 16), layout="NCHW", max_batch=16, budget_s=2.0)
    assert tuning.batch_size in {1, 2, 4, 8, 16}
    assert tuning.images_per_s is not None
    assert tuning.images_per_s > 0
