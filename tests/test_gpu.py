"""The engine on a CUDA device: the analytic cases hold there too, its numbers agree with the
CPU's, and a GPU worker's sandboxed sweep equals the in-process one. Skipped without CUDA."""

from __future__ import annotations

import pytest
import torch

from shiftaudit.engine import run_audit, sweep_shard
from shiftaudit.sandbox import Limits, sweep_in_sandbox

from .nets import AliasingNet, GlobalPoolNet, export_program, noise_probes, phase_probes
from .test_engine import _config

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]
VOLATILE = {"wall_time_s", "stage_seconds", "started_at"}


@pytest.fixture(scope="module")
def probes(tmp_path_factory):
    return noise_probes(tmp_path_factory.mktemp("probes"), 24, labels=5)


def test_circular_invariance_is_exact_on_the_gpu(tmp_path, probes):
    model = export_program(GlobalPoolNet(stride=1), tmp_path / "m.pt2")
    report = run_audit(model, probes, _config(device="cuda", mode="circular"))
    assert report.provenance.device.startswith("cuda:")
    assert report.summary.all.consistency.value == 1.0
    assert set(report.shift_map.agreement) == {1.0}
    assert report.summary.all.mean_kl.value < 1e-9
    maps = [e for e in report.layers.entries if e.kind == "map"]
    assert maps
    assert max(e.relative_error or 0.0 for e in maps) < 1e-5


def test_stride_two_period_is_found_on_the_gpu(tmp_path):
    probes = phase_probes(tmp_path / "p", 32)
    model = export_program(GlobalPoolNet(stride=2, seed=3), tmp_path / "m.pt2")
    report = run_audit(model, probes, _config(device="cuda", mode="circular", max_shift=4))
    period = report.shift_map.period
    assert period is not None
    assert (period.dy, period.dx) == (2, 2)
    assert report.summary.all.consistency.value < 1.0


@pytest.mark.parametrize(
    "sweep",
    [
        {"mode": "circular"},
        {"mode": "zero", "fill": [30, 60, 90]},
        {"mode": "reflect", "shifts": [[0, 0], [0.5, -1.25], [2.5, 0.75]], "subpixel": "bilinear"},
        {"mode": "circular", "shifts": [[0, 0], [0.5, -1.25], [2.5, 0.75]], "subpixel": "fourier"},
        {"mode": "canvas", "object_size": 8, "step": 2},
    ],
    ids=["circular", "zero", "bilinear", "fourier", "canvas"],
)
def test_gpu_and_cpu_reports_agree(tmp_path, probes, sweep):
    model = export_program(AliasingNet(seed=7), tmp_path / "m.pt2")
    cpu = run_audit(model, probes, _config(device="cpu", **sweep))
    gpu = run_audit(model, probes, _config(device="cuda", **sweep))
    # Float32 kernels differ in the last bits between devices; no prediction of this random
    # net is that close to a tie, so every agreement count is the same.
    assert gpu.shift_map.agreement == cpu.shift_map.agreement
    assert gpu.shift_map.accuracy == cpu.shift_map.accuracy
    for name, estimate in gpu.summary.all:
        reference = getattr(cpu.summary.all, name)
        if estimate is None:
            assert reference is None
            continue
        assert estimate.value == pytest.approx(reference.value, rel=1e-4, abs=1e-7), name


def test_the_gpu_sweep_is_repeatable(tmp_path, probes):
    model = export_program(AliasingNet(), tmp_path / "m.pt2")
    config = _config(device="cuda", mode="reflect")
    first, second = run_audit(model, probes, config), run_audit(model, probes, config)
    strip = {"provenance": VOLATILE}
    assert first.model_dump(exclude=strip) == second.model_dump(exclude=strip)


def test_a_gpu_workers_sandboxed_shard_equals_the_in_process_one(tmp_path, probes):
    model = export_program(AliasingNet(), tmp_path / "m.pt2")
    config = _config(device="cuda", mode="circular", max_shift=2)
    work = tmp_path / "work"
    work.mkdir()
    # As a GPU worker runs it: resident memory capped by the parent, no RLIMIT_DATA (the CUDA
    # driver's mappings would count against it).
    result = sweep_in_sandbox(
        model=model,
        probes=probes,
        config=config.model_dump(mode="json"),
        span=(3, 17),
        work_dir=work,
        limits=Limits(wall_time_s=300, memory_bytes=8 * 2**30, limit_data=False),
        on_tick=lambda progress: None,
        should_stop=lambda: False,
    )
    local = sweep_shard(model, probes, config, probes=(3, 17))
    assert result.device.startswith("cuda:")
    assert result.model_dump(exclude=VOLATILE) == local.model_dump(exclude=VOLATILE)
