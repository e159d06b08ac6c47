"""The engine on models whose shift behaviour is known analytically, and against a naive loop."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from shiftaudit.config import AuditConfig
from shiftaudit.engine import _chunks, _first_chunk, merge_shards, run_audit, sweep_shard
from shiftaudit.errors import ConfigError
from shiftaudit.report import ShardResult

from .nets import (
    AliasingNet,
    DenseHeadNet,
    GlobalPoolNet,
    TinyViT,
    export_all,
    export_program,
    noise_probes,
    phase_probes,
)


def _config(*, device: str = "auto", **sweep):
    return AuditConfig.model_validate(
        {
            "preprocess": {"input_size": [16, 16], "resize": 16},
            "sweep": {"max_shift": 3, **sweep},
            "runtime": {"batch_size": 24, "device": device},
            "bootstrap": 200,
        }
    )


@pytest.fixture(scope="module")
def probes(tmp_path_factory):
    return noise_probes(tmp_path_factory.mktemp("probes"), 24, labels=5)


def test_circular_global_pool_net_is_exactly_invariant(tmp_path, probes):
    model = export_program(GlobalPoolNet(stride=1), tmp_path / "m.pt2")
    report = run_audit(model, probes, _config(mode="circular"))
    summary = report.summary.all
    assert summary.consistency.value == 1.0
    assert summary.flip_rate is not None
    assert summary.flip_rate.value == 0.0
    assert summary.invariant_fraction is not None
    assert summary.invariant_fraction.value == 1.0
    assert summary.mean_kl.value < 1e-9
    assert set(report.shift_map.agreement) == {1.0}
    assert report.shift_map.period is not None
    assert (report.shift_map.period.dy, report.shift_map.period.dx) == (1, 1)
    maps = [e for e in report.layers.entries if e.kind == "map"]
    assert maps, "the conv outputs must be profiled"
    assert all(e.stride == 1 and e.relative_error is not None for e in maps)
    assert max(e.relative_error or 0.0 for e in maps) < 1e-5
    assert min(e.cosine or 0.0 for e in maps) > 0.99999


def test_stride_two_net_is_invariant_on_even_shifts_only(tmp_path):
    probes = phase_probes(tmp_path / "p", 32)
    model = export_program(GlobalPoolNet(stride=2, seed=3), tmp_path / "m.pt2")
    report = run_audit(model, probes, _config(mode="circular", max_shift=4))
    shifts = np.array(report.shift_map.shifts)
    agreement = np.array(report.shift_map.agreement)
    even = (shifts % 2 == 0).all(axis=1)
    assert (agreement[even] == 1.0).all()
    assert (agreement[~even] < 1.0).any()
    assert report.summary.all.consistency.value < 1.0
    period = report.shift_map.period
    assert period is not None
    assert (period.dy, period.dx) == (2, 2)
    assert period.phase_agreement is not None
    assert period.phase_agreement[0][0] == 1.0
    strides = {e.stride for e in report.layers.entries if e.kind == "map"}
    assert strides == {2}
    # Stride-2 maps are equivariant to even shifts: their error is ~0.
    assert max(e.relative_error or 0 for e in report.layers.entries if e.kind == "map") < 1e-5


def test_dense_head_on_flattened_features_is_not_invariant(tmp_path, probes):
    model = export_program(DenseHeadNet(), tmp_path / "m.pt2")
    report = run_audit(model, probes, _config(mode="circular"))
    summary = report.summary.all
    assert summary.consistency.value < 0.9
    assert summary.invariant_fraction is not None
    assert summary.invariant_fraction.value < 0.5
    assert report.shift_map.period is not None
    assert report.shift_map.period.dy is None
    # The conv itself is still equivariant: position leaks in at the dense head only.
    conv = [e for e in report.layers.entries if e.kind == "map"]
    assert conv
    assert max(e.relative_error or 0 for e in conv) < 1e-5


def test_the_three_formats_give_the_same_report(tmp_path, probes):
    paths = export_all(AliasingNet(), tmp_path)
    reports = {fmt: run_audit(path, probes, _config(mode="zero")) for fmt, path in paths.items()}
    first = reports["torch_export"]
    for fmt, report in reports.items():
        assert report.provenance.model_format == fmt
        assert report.shift_map.agreement == first.shift_map.agreement, fmt
        assert report.shift_map.accuracy == first.shift_map.accuracy, fmt
        for name, estimate in report.summary.all:
            ref = getattr(first.summary.all, name)
            if estimate is None:
                assert ref is None
                continue
            assert estimate.value == pytest.approx(ref.value, abs=1e-5), (fmt, name)
            assert estimate.ci_low == pytest.approx(ref.ci_low, abs=1e-5), (fmt, name)
    onnx_layers = {e.stride for e in reports["onnx"].layers.entries if e.kind == "map"}
    export_layers = {e.stride for e in first.layers.entries if e.kind == "map"}
    assert onnx_layers == export_layers == {2, 4}


def _naive_metrics(module, probe_dir, shifts, mode, labels):
    """One shift at a time, straight from the definitions in science.md."""
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    names = sorted(p.name for p in probe_dir.glob("*.png"))
    probs = []  # [probe][shift] -> probability vector
    for name in names:
        pixels = torch.from_numpy(np.asarray(Image.open(probe_dir / name).convert("RGB")))
        x = pixels.permute(2, 0, 1).float() / 255.0  # already 16x16: no resize
        row = []
        for dy, dx in shifts:
            if mode == "circular":
                shifted = torch.roll(x, (dy, dx), dims=(1, 2))
            else:
                padded = F.pad(x[None], (4, 4, 4, 4), value=0.0)[0]
                shifted = padded[:, 4 - dy : 4 - dy + 16, 4 - dx : 4 - dx + 16]
            with torch.no_grad():
                logits = module(((shifted - mean) / std)[None])[0]
            row.append(torch.softmax(logits.double(), 0).numpy())
        probs.append(row)
    probs = np.array(probs)  # (N, K, C)
    top = probs.argmax(2)
    zero = shifts.index((0, 0))
    k = len(shifts)
    consistency = np.mean([sum((np.sum(t == c) / k) ** 2 for c in set(t)) for t in top])
    pairs = [
        (a, b)
        for a, s in enumerate(shifts)
        for b, u in enumerate(shifts)
        if (u[0] - s[0], u[1] - s[1]) in ((1, 0), (0, 1))
    ]
    flips = np.mean([[top[i, a] != top[i, b] for a, b in pairs] for i in range(len(names))])
    change = np.mean(
        [
            [abs(probs[i, a, top[i, a]] - probs[i, b, top[i, a]]) for a, b in pairs]
            for i in range(len(names))
        ]
    )
    kl = np.mean(
        [
            [np.sum(probs[i, zero] * np.log(probs[i, zero] / probs[i, t])) for t in range(k)]
            for i in range(len(names))
        ]
    )
    label = np.array([labels[n] for n in names])
    return {
        "consistency": consistency,
        "flip_rate": flips,
        "mean_prob_change": change,
        "mean_kl": kl,
        "invariant_fraction": np.mean([(t == t[zero]).all() for t in top]),
        "accuracy": np.mean(top[:, zero] == label),
        "shift_accuracy_mean": np.mean(top == label[:, None]),
        "worst_case_accuracy": np.mean((top == label[:, None]).all(1)),
        "agreement": (top == top[:, zero : zero + 1]).mean(0),
        "correct_consistency": np.mean(
            [
                sum((np.sum(t == c) / k) ** 2 for c in set(t))
                for t, ok in zip(top, top[:, zero] == label, strict=True)
                if ok
            ]
        ),
    }


@pytest.mark.parametrize("mode", ["circular", "zero"])
def test_engine_agrees_with_a_naive_one_shift_at_a_time_loop(tmp_path, probes, mode):
    module = AliasingNet(seed=7).eval()
    model = export_program(module, tmp_path / "m.pt2")
    with open(probes / "labels.csv") as handle:
        labels = {row["filename"]: int(row["label"]) for row in csv.DictReader(handle)}
    report = run_audit(model, probes, _config(mode=mode, max_shift=2))
    shifts = [(int(y), int(x)) for y, x in report.shift_map.shifts]
    naive = _naive_metrics(module, probes, shifts, mode, labels)
    summary = report.summary.all
    for name in (
        "consistency",
        "flip_rate",
        "mean_prob_change",
        "mean_kl",
        "invariant_fraction",
        "accuracy",
        "shift_accuracy_mean",
        "worst_case_accuracy",
    ):
        assert getattr(summary, name).value == pytest.approx(naive[name], abs=1e-5), name
    assert np.allclose(report.shift_map.agreement, naive["agreement"])
    assert report.summary.unshifted_correct is not None
    assert report.summary.unshifted_correct.consistency.value == pytest.approx(
        naive["correct_consistency"], abs=1e-9
    )
    assert summary.consistency.ci_low <= summary.consistency.value <= summary.consistency.ci_high


def test_same_inputs_and_seed_give_identical_numbers(tmp_path, probes):
    model = export_program(AliasingNet(), tmp_path / "m.pt2")
    config = _config(mode="reflect")
    first, second = run_audit(model, probes, config), run_audit(model, probes, config)
    strip = {"provenance": {"wall_time_s", "stage_seconds", "started_at"}}
    assert first.model_dump(exclude=strip) == second.model_dump(exclude=strip)


@pytest.mark.parametrize("mode", ["circular", "canvas"])
def test_shards_merge_into_the_unsharded_report(tmp_path, probes, mode):
    model = export_program(AliasingNet(), tmp_path / "m.pt2")
    config = _config(mode=mode, **({"object_size": 8, "step": 2} if mode == "canvas" else {}))
    whole = run_audit(model, probes, config)
    # Uneven shards, handed over as JSON in any order, as the workers do.
    shards = [
        ShardResult.model_validate_json(
            sweep_shard(model, probes, config, probes=span).model_dump_json()
        )
        for span in ((17, 24), (0, 5), (5, 17))
    ]
    merged = merge_shards(shards, config)
    strip = {"provenance": {"wall_time_s", "stage_seconds", "started_at", "shards"}}
    assert merged.model_dump(exclude=strip) == whole.model_dump(exclude=strip)
    assert (merged.provenance.shards, whole.provenance.shards) == (3, 1)
    assert [s.layers is not None for s in shards] == [False, True, False]


@pytest.mark.parametrize(
    ("batch", "per_probe", "chunk_size", "expected"),
    [
        (16, 25, 160, [16, 32, 64, 128, 160, 160, 160, 160, 50]),  # 16 x 25 pairs: 25 batches
        (8, 25, 160, [8, 16, 32, 64, 128, 160, 160, 160, 160, 42]),
        (64, 9, 256, [64, 128, 256, 256, 226]),
        # Whole batches need 1024 probes, more than a chunk holds: about one batch first.
        (1024, 25, 327, [40, 80, 160, 320, 327, 3]),
    ],
)
def test_ramped_chunks_cover_the_probes_and_pad_only_the_last(
    batch, per_probe, chunk_size, expected
):
    indices = range(930)
    first = _first_chunk(chunk_size, per_probe=per_probe, batch=batch)
    chunks = list(_chunks(indices, first, chunk_size))
    assert [len(c) for c in chunks] == expected
    assert [i for c in chunks for i in c] == list(indices)
    if batch <= chunk_size:  # every chunk but the last fills whole batches: no padding
        assert all(len(c) * per_probe % batch == 0 for c in chunks[:-1])


def test_shards_that_do_not_cover_the_probe_set_are_refused(tmp_path, probes):
    model = export_program(GlobalPoolNet(stride=1), tmp_path / "m.pt2")
    config = _config()
    first = sweep_shard(model, probes, config, probes=(0, 10))
    with pytest.raises(ConfigError, match=r"cover 10 of 24 probes"):
        merge_shards([first], config)
    with pytest.raises(ConfigError, match=r"uncovered"):
        merge_shards([first, sweep_shard(model, probes, config, probes=(12, 24))], config)
    with pytest.raises(ConfigError, match=r"do not lie within"):
        sweep_shard(model, probes, config, probes=(20, 30))


def test_canvas_reports_a_position_map(tmp_path, probes):
    model = export_program(AliasingNet(), tmp_path / "m.pt2")
    report = run_audit(model, probes, _config(mode="canvas", object_size=8, step=2))
    position = report.position_map
    assert position is not None
    assert position.positions_y == [0, 2, 4, 6, 8]
    assert np.array(position.agreement).shape == (5, 5)
    assert position.agreement[2][2] == 1.0  # the centred object is the reference
    assert position.accuracy is not None


def test_random_pairs_estimate_the_exact_consistency(tmp_path, probes):
    model = export_program(AliasingNet(), tmp_path / "m.pt2")
    exact = run_audit(model, probes, _config(mode="circular", max_shift=2))
    sampled = run_audit(
        model, probes, _config(mode="circular", max_shift=2, sampling={"pairs_per_probe": 400})
    )
    assert sampled.estimator == "random_pairs"
    assert sampled.summary.all.invariant_fraction is None
    assert sampled.summary.all.consistency.value == pytest.approx(
        exact.summary.all.consistency.value, abs=0.05
    )


def test_token_outputs_are_profiled_as_maps(tmp_path, probes):
    plain = export_program(TinyViT(positional=False), tmp_path / "plain.pt2")
    report = run_audit(plain, probes, _config(mode="circular"))
    tokens = [e for e in report.layers.entries if e.kind == "tokens"]
    assert tokens
    assert {e.stride for e in tokens} == {4}
    errors = [e.relative_error for e in tokens if e.relative_error is not None]
    assert errors
    assert min(errors) < 1e-5
    positional = export_program(TinyViT(positional=True), tmp_path / "pos.pt2")
    report = run_audit(positional, probes, _config(mode="circular"))
    errors = [e.relative_error or 0.0 for e in report.layers.entries if e.kind == "tokens"]
    assert max(errors) > 0.05  # position embeddings break equivariance


def test_torchscript_layers_say_why_or_work(tmp_path, probes):
    paths = export_all(GlobalPoolNet(), tmp_path)
    report = run_audit(paths["torchscript"], probes, _config())
    assert report.layers.available or report.layers.reason


class _BgrNhwcProbabilities(torch.nn.Module):
    """Takes 0-255 BGR NHWC input and returns probabilities of the wrapped RGB NCHW net."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406])[:, None, None])
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225])[:, None, None])

    def forward(self, x):
        rgb = x.permute(0, 3, 1, 2).flip(1) / 255.0
        return torch.softmax(self.inner((rgb - self.mean) / self.std), dim=1)


def test_layout_channel_order_scale_and_probability_outputs_are_honoured(tmp_path, probes):
    inner = AliasingNet(seed=5).eval()
    reference = run_audit(export_program(inner, tmp_path / "ref.pt2"), probes, _config())
    wrapped = _BgrNhwcProbabilities(inner).eval()
    batch = torch.export.Dim("batch", min=1, max=65536)
    program = torch.export.export(
        wrapped, (torch.zeros(2, 16, 16, 3),), dynamic_shapes=({0: batch},)
    )
    torch.export.save(program, tmp_path / "nhwc.pt2")
    config = _config().model_copy(
        update={
            "preprocess": _config().preprocess.model_copy(
                update={
                    "channel_order": "BGR",
                    "value_scale": 255.0,
                    "mean": (0.0, 0.0, 0.0),
                    "std": (1.0, 1.0, 1.0),
                    "output": "probabilities",
                }
            )
        }
    )
    report = run_audit(tmp_path / "nhwc.pt2", probes, config)
    assert report.provenance.config.preprocess.layout is None  # read from the model
    assert report.shift_map.agreement == reference.shift_map.agreement
    for name in ("consistency", "flip_rate", "mean_kl", "accuracy"):
        ours, theirs = getattr(report.summary.all, name), getattr(reference.summary.all, name)
        assert ours.value == pytest.approx(theirs.value, abs=1e-5), name


def test_outputs_that_contradict_the_config_or_labels_are_refused(tmp_path, probes):
    from shiftaudit.errors import ConfigError

    model = export_program(GlobalPoolNet(classes=3), tmp_path / "m.pt2")
    with pytest.raises(ConfigError, match="label 4 but the model outputs only 3 classes"):
        run_audit(model, probes, _config())
    unlabelled = noise_probes(tmp_path / "u", 4)
    probabilities = _config().model_copy(
        update={"preprocess": _config().preprocess.model_copy(update={"output": "probabilities"})}
    )
    with pytest.raises(ConfigError, match="do not sum to 1"):
        run_audit(model, unlabelled, probabilities)
    named = _config().model_copy(update={"class_names": ["cat", "dog"]})
    with pytest.raises(ConfigError, match="class_names has 2 names but the model outputs 3"):
        run_audit(model, unlabelled, named)


@pytest.mark.parametrize(
    "sweep",
    [
        {"mode": "edge"},
        {"mode": "crop", "max_shift": 3},
        {"mode": "circular", "shifts": [[0.5, 0], [0, -0.5], [1.25, 0.75]]},
        {"mode": "circular", "shifts": [[0.5, 0], [0, -0.5]], "subpixel": "fourier"},
        {"mode": "zero", "fill": [255, 128, 0], "shifts": [[2, 2], [-1.5, 0.5]]},
    ],
)
def test_every_family_runs_end_to_end_with_a_sane_report(tmp_path, probes, sweep):
    model = export_program(AliasingNet(), tmp_path / "m.pt2")
    report = run_audit(model, probes, _config(**sweep))
    shifts = report.shift_map.shifts
    zero = shifts.index((0.0, 0.0))
    assert report.shift_map.agreement[zero] == 1.0
    assert set(report.shift_map.evaluations) == {24}
    consistency = report.summary.all.consistency
    assert 0 < consistency.value <= 1
    assert consistency.ci_low <= consistency.value <= consistency.ci_high
    if "shifts" in sweep:
        assert len(shifts) == len(sweep["shifts"]) + 1  # (0, 0) added


def test_mixed_precision_applies_to_torch_models_and_the_report_says_what_ran(tmp_path, probes):
    paths = export_all(AliasingNet(), tmp_path)
    config = _config(mode="circular")
    mixed = config.model_copy(
        update={"runtime": config.runtime.model_copy(update={"precision": "bf16"})}
    )
    full = run_audit(paths["torch_export"], probes, config)
    half = run_audit(paths["torch_export"], probes, mixed)
    assert (full.provenance.precision, half.provenance.precision) == ("fp32", "bf16")
    # bfloat16 keeps 8 mantissa bits: the probabilities move, the predictions hardly.
    assert half.summary.all.mean_kl.value != full.summary.all.mean_kl.value
    assert half.summary.all.consistency.value == pytest.approx(
        full.summary.all.consistency.value, abs=0.05
    )
    onnx = run_audit(paths["onnx"], probes, mixed)
    assert onnx.provenance.precision == "fp32"  # ONNX runs as exported
