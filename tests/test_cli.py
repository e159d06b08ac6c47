"""The `shiftaudit` command as a user runs it: a real subprocess, real files."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from shiftaudit.report import Report

from .nets import AliasingNet, export_program, noise_probes


def _run(*args, cwd=None):
    env = {**os.environ, "SHIFTAUDIT_CACHE_DIR": str(cwd or ".")}
    return subprocess.run(
        [sys.executable, "-m", "shiftaudit_cli", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=300,
        check=False,
    )


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    model = export_program(AliasingNet(), root / "model.pt2")
    probes = noise_probes(root / "probes", 6, labels=6)
    config = root / "config.json"
    config.write_text(json.dumps({"preprocess": {"resize": 16}, "bootstrap": 50}))
    return root, model, probes, config


def test_audit_prints_a_summary_and_writes_a_valid_report(inputs):
    root, model, probes, config = inputs
    out = root / "out" / "report.json"
    result = _run(
        "audit",
        model,
        probes,
        "--config",
        config,
        "--mode",
        "reflect",
        "--max-shift",
        "2",
        "--seed",
        "7",
        "--out",
        out,
        cwd=root,
    )
    assert result.returncode == 0, result.stderr
    assert "consistency" in result.stdout
    assert "accuracy" in result.stdout
    assert "100% done" in result.stderr  # progress goes to stderr, never into the table
    report = Report.model_validate_json(out.read_text())
    assert report.mode == "reflect"
    assert report.provenance.seed == 7
    assert len(report.shift_map.shifts) == 25
    assert report.provenance.config.preprocess.resize == 16


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["audit", "{probes}/probe0000.png", "{probes}"],
            "not an ONNX, TorchScript or torch.export",
        ),
        (["audit", "{model}", "{root}/missing"], "missing"),
        (["audit", "{model}", "{probes}", "--max-shift", "-3"], "sweep.max_shift"),
        (["audit", "{model}", "{probes}", "--config", "{root}/bad.json"], "not valid JSON"),
        (["audit", "{model}", "{probes}", "--config", "{root}/size.json"], "(N, 3, 16, 16)"),
    ],
)
def test_bad_input_exits_non_zero_with_one_line(inputs, args, message):
    root, model, probes, _ = inputs
    (root / "bad.json").write_text("{not json")
    (root / "size.json").write_text(json.dumps({"preprocess": {"input_size": [32, 32]}}))
    filled = [a.format(root=root, model=model, probes=probes) for a in args]
    result = _run(*filled, "--quiet", cwd=root)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("shiftaudit: error:")
    assert message in lines[0]


def test_schema_command_prints_the_published_schema(tmp_path):
    result = _run("schema", cwd=tmp_path)
    assert result.returncode == 0
    assert json.loads(result.stdout) == Report.model_json_schema()


@pytest.mark.parametrize("which", ["report", "config"])
def test_published_schema_files_are_current(which):
    """docs/*.schema.json are what integrators read: regenerate with `shiftaudit schema`."""
    from pathlib import Path

    from shiftaudit.config import AuditConfig

    model = Report if which == "report" else AuditConfig
    published = Path(__file__).parents[1] / "docs" / f"{which}.schema.json"
    assert json.loads(published.read_text()) == model.model_json_schema()


def test_input_size_on_the_command_line_audits_a_model_that_declares_none(inputs):
    root, _, probes, config = inputs
    traced = root / "traced.ts"
    torch.jit.trace(AliasingNet().eval(), torch.randn(2, 3, 16, 16)).save(str(traced))
    refused = _run("audit", traced, probes, "--config", config, "--quiet", cwd=root)
    assert refused.returncode == 2
    assert "does not declare its input size" in refused.stderr
    assert "--input-size H W" in refused.stderr
    out = root / "traced.json"
    done = _run(
        "audit",
        traced,
        probes,
        "--config",
        config,
        "--input-size",
        "16",
        "16",
        "--out",
        out,
        "--quiet",
        cwd=root,
    )
    assert done.returncode == 0, done.stderr
    assert Report.model_validate_json(out.read_text()).input_size == (16, 16)
