"""The sandboxed sweep: the same numbers as in-process, nothing of the parent's secrets."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import torch

from shiftaudit.config import AuditConfig
from shiftaudit.engine import sweep_shard
from shiftaudit.sandbox import Limits, SandboxError, Stopped, sweep_in_sandbox

from .hostile_models import endless_model
from .nets import AliasingNet, export_program, noise_probes

CONFIG = {
    "preprocess": {"input_size": [16, 16], "resize": 16},
    "sweep": {"mode": "circular", "max_shift": 2},
    "runtime": {"batch_size": 25, "device": "cpu"},
    "bootstrap": 50,
}
VOLATILE = {"wall_time_s", "stage_seconds", "started_at"}


def _sweep(model: Path, probes: Path, work: Path, **kwargs):
    work.mkdir()
    options = {"on_tick": lambda progress: None, "should_stop": lambda: False} | kwargs
    return sweep_in_sandbox(
        model=model,
        probes=probes,
        config=CONFIG,
        span=(2, 9),
        work_dir=work,
        limits=Limits(wall_time_s=120, memory_bytes=2 * 2**30),
        **options,
    )


def test_a_sandboxed_shard_equals_the_in_process_one(tmp_path):
    model = export_program(AliasingNet(), tmp_path / "m.pt2")
    probes = noise_probes(tmp_path / "probes", 10, labels=6)
    ticks: list[float] = []
    result = _sweep(model, probes, tmp_path / "work", on_tick=ticks.append, tick_s=0.05)
    local = sweep_shard(model, probes, AuditConfig.model_validate(CONFIG), probes=(2, 9))
    assert result.model_dump(exclude=VOLATILE) == local.model_dump(exclude=VOLATILE)
    assert ticks == sorted(ticks)


def test_the_sweep_sees_none_of_the_parents_secrets(tmp_path, monkeypatch):
    secrets = {
        "DATABASE_URL": "postgresql://user:hunter2@db/prod",
        "SHIFTAUDIT_SECRET_KEY": "s" * 40,
        "AWS_SECRET_ACCESS_KEY": "aws-secret",
    }
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # a worker's GPU assignment is passed on
    seen: dict[str, str] = {}

    def inspect_child() -> bool:
        for child in _children():
            raw = (child / "environ").read_bytes().split(b"\0")
            seen.update(entry.decode().split("=", 1) for entry in raw if b"=" in entry)
        return bool(seen)  # stop once the child's environment has been read

    with pytest.raises(Stopped):
        _sweep(
            endless_model(tmp_path),
            noise_probes(tmp_path / "probes", 10),
            tmp_path / "work",
            should_stop=inspect_child,
        )
    assert seen["HOME"] == seen["TMPDIR"] == str(tmp_path / "work")
    assert seen["CUDA_VISIBLE_DEVICES"] == ""
    assert not set(secrets) & set(seen)
    assert not any(value in "".join(seen.values()) for value in secrets.values())
    assert not list(_children()), "the stopped sweep was killed"


def test_refused_probes_are_an_input_error(tmp_path):
    model = export_program(AliasingNet(), tmp_path / "m.pt2")
    (tmp_path / "probes").mkdir()
    (tmp_path / "probes" / "a.png").write_bytes(b"not a png")
    with pytest.raises(SandboxError, match=r"a\.png") as raised:
        _sweep(model, tmp_path / "probes", tmp_path / "work")
    assert raised.value.input_error


def test_a_crash_in_the_engine_is_one_sentence_and_its_trace_goes_to_the_log(tmp_path, caplog):
    model = export_program(AliasingNet(), tmp_path / "m.pt2")
    work = tmp_path / "work"
    work.mkdir()
    with (
        caplog.at_level(logging.WARNING, logger="shiftaudit.sandbox"),
        pytest.raises(SandboxError) as raised,
    ):
        sweep_in_sandbox(  # a config only the child reads: it dies on a trace
            model=model,
            probes=noise_probes(tmp_path / "probes", 4),
            config={"sweep": {"mode": "spiral"}},
            span=None,
            work_dir=work,
            limits=Limits(wall_time_s=120),
            on_tick=lambda progress: None,
            should_stop=lambda: False,
        )
    assert str(raised.value) == (
        "the audit process failed with exit code 1 (the worker's log has its last lines)"
    )
    assert not raised.value.input_error
    assert not raised.value.transient
    assert "Traceback" in caplog.text
    assert "spiral" in caplog.text


class _RaisesInForward(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > 0:
            raise RuntimeError("the head expects 7 channels")
        return x.mean(dim=(2, 3))


def test_a_models_own_error_is_its_last_line_without_the_trace_or_paths(tmp_path, caplog):
    model = tmp_path / "m.pt"  # TorchScript puts its trace and the author's paths first
    torch.jit.script(_RaisesInForward()).save(str(model))
    with (
        caplog.at_level(logging.INFO, logger="shiftaudit.sandbox"),
        pytest.raises(SandboxError) as raised,
    ):
        _sweep(model, noise_probes(tmp_path / "probes", 10), tmp_path / "work")
    assert raised.value.input_error
    assert str(raised.value).endswith("RuntimeError: the head expects 7 channels")
    assert "Traceback" not in str(raised.value)
    assert __file__ not in str(raised.value)
    assert __file__ in caplog.text, "the whole trace is in the worker's log"


def _children():
    """Live sandboxed sweeps started by this process."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().split(") ", 1)[1].split()
            command = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if int(stat[1]) == os.getpid() and stat[0] != "Z" and b"shiftaudit.sandbox" in command:
            yield entry
