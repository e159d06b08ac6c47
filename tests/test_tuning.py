"""Batch-size tuning: measured once, cached, and skipped where measuring costs more."""

from __future__ import annotations

import json

from shiftaudit.runtimes import load_runtime
from shiftaudit.tuning import UNTUNED_BATCH, choose, measure

from .nets import AliasingNet, export_program


def test_measure_returns_a_timed_setting(tmp_path):
    model = load_runtime(export_program(AliasingNet(), tmp_path / "m.pt2"))
    tuning = measure(model, size=(16, 16), layout="NCHW", max_batch=16, budget_s=2.0)
    assert tuning.batch_size in {1, 2, 4, 8, 16}
    assert tuning.images_per_s is not None
    assert tuning.images_per_s > 0


def test_choice_is_cached_per_model_and_reused(tmp_path):
    model = load_runtime(export_program(AliasingNet(), tmp_path / "m.pt2"))
    args = {
        "model_sha256": "abc",
        "size": (16, 16),
        "layout": "NCHW",
        "total_pairs": 10_000,
        "fixed_batch": None,
        "cache_dir": tmp_path / "cache",
    }
    first = choose(model, **args)
    cache_file = tmp_path / "cache" / "tuning.json"
    entries = json.loads(cache_file.read_text())
    (key,) = entries
    assert key.startswith("abc|cpu:")
    # A cached entry is used as is: plant one no measurement would produce.
    entries[key]["batch_size"] = 7
    cache_file.write_text(json.dumps(entries))
    assert choose(model, **args).batch_size == 7
    # A damaged entry is measured again and replaced.
    cache_file.write_text(json.dumps({key: {"batch_size": "x"}}))
    again = choose(model, **args)
    assert isinstance(again.batch_size, int)
    assert json.loads(cache_file.read_text())[key]["batch_size"] == again.batch_size
    assert first.images_per_s is not None


def test_small_audits_and_fixed_batches_are_not_measured(tmp_path):
    model = load_runtime(export_program(AliasingNet(), tmp_path / "m.pt2"))
    common = {
        "model_sha256": "abc",
        "size": (16, 16),
        "layout": "NCHW",
        "cache_dir": tmp_path / "cache",
    }
    small = choose(model, total_pairs=100, fixed_batch=None, **common)
    assert small.batch_size == min(UNTUNED_BATCH, 100)
    assert small.images_per_s is None
    fixed = choose(model, total_pairs=10_000, fixed_batch=5, **common)
    assert fixed.batch_size == 5
    assert not (tmp_path / "cache").exists()
