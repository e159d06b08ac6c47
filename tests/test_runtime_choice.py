"""The runtime choice: the fastest runtime that agrees with the model's own, pinned runtimes,
and its cache. The models are built here (tests/nets.py); every timing is real."""

from __future__ import annotations

import json

import pytest
import torch

from shiftaudit.config import AuditConfig
from shiftaudit.engine import run_audit
from shiftaudit.errors import ConfigError
from shiftaudit.runtime_choice import TOLERANCE, agreement, choose_runtime
from shiftaudit.runtimes import load_runtime
from shiftaudit.runtimes.conversion import exported_runtime, onnx_bytes
from shiftaudit.tuning import Tuning, example_input

from .nets import ChainNet, export_all, export_program, noise_probes

VOLATILE = {"provenance": {"wall_time_s", "stage_seconds", "started_at"}}


def _config(**runtime):
    """24 probes x 49 shifts: enough forward passes for the engine to measure."""
    return AuditConfig.model_validate(
        {
            "preprocess": {"input_size": [16, 16], "resize": 16},
            "sweep": {"mode": "zero", "max_shift": 3},
            "runtime": {"device": "cpu", **runtime},
            "layers": {"enabled": False},
            "bootstrap": 0,
        }
    )


@pytest.fixture(scope="module")
def probes(tmp_path_factory):
    return noise_probes(tmp_path_factory.mktemp("probes"), 24, labels=5)


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    return export_program(ChainNet(), tmp_path_factory.mktemp("chain") / "chain.pt2")


@pytest.fixture(scope="module")
def chosen(tmp_path_factory, chain, probes):
    """One measured audit of the chain net, and its cache directory."""
    cache = tmp_path_factory.mktemp("cache")
    return run_audit(chain, probes, _config(), tuning_cache=cache), cache


def test_onnx_runtime_is_chosen_when_faster_and_agreeing(chosen):
    report, _ = chosen
    provenance = report.provenance
    choice = provenance.runtime_choice
    assert choice is not None
    assert provenance.backend == choice.chosen == "onnxruntime-exported"
    assert provenance.execution_provider == "CPUExecutionProvider"
    assert provenance.model_format == "torch_export"  # the file's format, not the runtime's
    timed = {(c.backend, c.threads): c.images_per_s for c in choice.candidates}
    fastest_torch = max(v for (b, _), v in timed.items() if b == "torch" and v is not None)
    assert timed["onnxruntime-exported", provenance.threads] > fastest_torch
    (check,) = choice.checks
    assert check.passed
    assert check.same_top1
    assert check.max_abs_diff is not None
    assert check.max_abs_diff <= check.tolerance
    assert (check.reference, check.candidate) == ("torch", "onnxruntime-exported")
    assert "agrees" in choice.reason


def test_the_exported_runtime_gives_the_audit_the_model_itself_gives(chosen, chain, probes):
    report, _ = chosen
    pinned = run_audit(chain, probes, _config(backend="torch", batch_size=16))
    assert pinned.provenance.backend == "torch"
    assert report.shift_map.agreement == pinned.shift_map.agreement
    assert report.summary.all.mean_kl.value == pytest.approx(
        pinned.summary.all.mean_kl.value, rel=1e-3, abs=1e-9
    )


def test_rerun_with_the_cache_gives_the_identical_report(chosen, chain, probes):
    first, cache = chosen
    entries = json.loads((cache / "tuning.json").read_text())
    (entry,) = entries.values()
    # The exported graph is kept beside the choice, so a rerun runs the graph that was checked.
    assert (cache / "onnx" / f"{entry['onnx_sha256']}.onnx").exists()
    second = run_audit(chain, probes, _config(), tuning_cache=cache)
    assert second.model_dump(exclude=VOLATILE) == first.model_dump(exclude=VOLATILE)


def test_an_export_that_disagrees_is_refused_and_the_report_says_why(tmp_path, probes):
    model = export_program(ChainNet(log1p=True), tmp_path / "log1p.pt2")
    report = run_audit(model, probes, _config(), tuning_cache=tmp_path / "cache")
    choice = report.provenance.runtime_choice
    assert choice is not None
    assert report.provenance.backend == choice.chosen == "torch"
    assert report.provenance.execution_provider is None
    # ONNX Runtime was faster, so it was checked, and refused.
    assert choice.checks
    assert all(not c.passed for c in choice.checks)
    worst = max(c.max_abs_diff or float("inf") for c in choice.checks)
    assert worst > choice.checks[0].tolerance
    refused = [c for c in choice.candidates if (c.note or "").startswith("refused")]
    assert refused
    assert {c.backend for c in refused} == {"onnxruntime-exported"}
    assert "disagrees" in choice.reason


def test_a_pinned_runtime_is_honoured(tmp_path, chain, probes):
    torch_only = run_audit(chain, probes, _config(backend="torch"))
    choice = torch_only.provenance.runtime_choice
    assert choice is not None
    assert torch_only.provenance.backend == "torch"
    assert {c.backend for c in choice.candidates} == {"torch"}
    assert choice.reason == "pinned by runtime.backend"
    # Pinned to a disagreeing export: used all the same, and the report says it disagrees.
    log1p = export_program(ChainNet(log1p=True), tmp_path / "log1p.pt2")
    for batch in (None, 8):  # measured, and not (batch size pinned too)
        report = run_audit(log1p, probes, _config(backend="onnxruntime-exported", batch_size=batch))
        choice = report.provenance.runtime_choice
        assert choice is not None
        assert report.provenance.backend == "onnxruntime-exported"
        (check,) = choice.checks
        assert not check.passed
        assert "disagrees" in choice.reason
        assert {c.backend for c in choice.candidates} <= {"onnxruntime-exported"}
    with pytest.raises(ConfigError, match="cannot run a torch_export model"):
        run_audit(chain, probes, _config(backend="onnxruntime"))


def test_torchscript_is_exported_too_and_onnx_files_run_as_they_are(tmp_path, probes):
    paths = export_all(ChainNet(seed=2), tmp_path)
    traced = run_audit(paths["torchscript"], probes, _config())
    choice = traced.provenance.runtime_choice
    assert choice is not None
    exported = [c for c in choice.candidates if c.backend == "onnxruntime-exported"]
    assert exported
    assert all(c.images_per_s is not None for c in exported)  # exported and timed
    assert traced.provenance.backend == "onnxruntime-exported"
    onnx = run_audit(paths["onnx"], probes, _config())
    choice = onnx.provenance.runtime_choice
    assert choice is not None
    assert onnx.provenance.backend == "onnxruntime"
    assert {c.backend for c in choice.candidates} == {"onnxruntime"}
    assert len(choice.candidates) == len({c.threads for c in choice.candidates}) >= 1


def test_small_audits_fixed_batches_and_autocast_keep_the_models_own_runtime(
    tmp_path, chain, probes
):
    few = noise_probes(tmp_path / "few", 3)  # 3 x 49 pairs: not worth measuring
    for report in (
        run_audit(chain, few, _config()),
        run_audit(chain, probes, _config(batch_size=16)),
    ):
        choice = report.provenance.runtime_choice
        assert choice is not None
        assert report.provenance.backend == "torch"
        assert choice.candidates == []
        assert "no runtime was timed" in choice.reason
    mixed = run_audit(chain, probes, _config(precision="bf16"))
    choice = mixed.provenance.runtime_choice
    assert choice is not None
    assert mixed.provenance.backend == "torch"
    (untimed,) = [c for c in choice.candidates if c.backend == "onnxruntime-exported"]
    assert untimed.images_per_s is None
    assert "autocast" in (untimed.note or "")
    # Pinned to ONNX Runtime, autocast could not apply: refused rather than mislabelled.
    with pytest.raises(ConfigError, match="autocast"):
        run_audit(
            chain, probes, _config(backend="onnxruntime-exported", precision="bf16", batch_size=8)
        )


def test_the_check_compares_top1_and_logits_at_the_stated_tolerance(tmp_path):
    model = load_runtime(export_program(ChainNet(), tmp_path / "m.pt2"))
    same = exported_runtime(
        onnx_bytes(model, size=(16, 16), layout="NCHW"), device=model.device, threads=1, label="m"
    )
    other = load_runtime(export_program(ChainNet(seed=9), tmp_path / "other.pt2"))
    x = example_input(
        batch=8, size=(16, 16), layout="NCHW", channels_last=False, device=torch.device("cpu")
    )
    setting = (Tuning(batch_size=3, channels_last=False, images_per_s=None), 1)
    agreed = agreement(model, same, x, reference_setting=setting, setting=setting)
    assert agreed.passed
    assert agreed.rows == 8
    scale = float(model(x).abs().max())
    assert agreed.tolerance == pytest.approx(TOLERANCE * max(1.0, scale))
    differs = agreement(model, other, x, reference_setting=setting, setting=setting)
    assert not differs.passed
    assert differs.max_abs_diff is not None
    assert differs.max_abs_diff > differs.tolerance


def test_a_damaged_cache_entry_is_measured_again(tmp_path, chain, probes):
    cache = tmp_path / "cache"
    model = load_runtime(chain)
    args = {
        "model_sha256": "abc",
        "runtime": _config(backend="torch").runtime,
        "size": (16, 16),
        "layout": "NCHW",
        "total_pairs": 10_000,
        "available_threads": 1,
        "check_input": lambda: pytest.fail("a pinned own runtime needs no check"),
        "cache_dir": cache,
    }
    first = choose_runtime(model, **args)
    entries = json.loads((cache / "tuning.json").read_text())
    (key,) = entries
    assert key.startswith("abc|cpu:")
    entries[key]["batch_size"] = 7  # no measurement gives 7: a cached entry is used as is
    (cache / "tuning.json").write_text(json.dumps(entries))
    assert choose_runtime(model, **args).tuning.batch_size == 7
    (cache / "tuning.json").write_text(json.dumps({key: {"batch_size": "x"}}))
    again = choose_runtime(model, **args)
    assert json.loads((cache / "tuning.json").read_text())[key]["batch_size"] == (
        again.tuning.batch_size
    )
    assert first.tuning.images_per_s is not None


def test_an_audit_leaves_torchs_thread_count_as_it_found_it(chosen, chain, probes):
    _, cache = chosen
    saved = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        report = run_audit(chain, probes, _config(), tuning_cache=cache)
        assert report.provenance.backend == "onnxruntime-exported"  # it ran torch at 1 thread
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(saved)
