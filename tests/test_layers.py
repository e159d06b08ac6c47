"""The layer profile of report 1.2 on networks whose behaviour under shifts is known.

Every number is checked against its definition in science.md ("Per-layer equivariance,
aliasing and receptive fields"), by analysis where the answer is known exactly, and against
a naive implementation written here (torch.roll, numpy's FFT, the network run module by
module) where it is not.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from shiftaudit.profile.access import open_graph
from shiftaudit.profile.fx_graph import FxGraph
from shiftaudit.profile.geometry import geometry_of, positions
from shiftaudit.profile.ideal_shift import IdealShifter, ideal_shift
from shiftaudit.profile.layer_profile import layer_profile
from shiftaudit.profile.onnx_graph import OnnxGraph
from shiftaudit.profile.receptive_fields import receptive_fields
from shiftaudit.runtimes import load_runtime

from .nets import (
    AliasingNet,
    DenseHeadNet,
    GlobalPoolNet,
    TinyViT,
    export_all,
    export_onnx,
    export_program,
    noise_probes,
)


def _numpy_ideal_shift(grid: np.ndarray, d: tuple[float, float]) -> np.ndarray:
    """T_d over the last two axes, straight from the definition, with numpy's FFT."""
    h, w = grid.shape[-2:]
    ky = np.fft.fftfreq(h)[:, None]  # k_y / h over the signed frequencies
    kx = np.fft.fftfreq(w)[None, :]
    ramp = np.exp(-2j * np.pi * (ky * d[0] + kx * d[1]))
    return np.real(np.fft.ifft2(np.fft.fft2(grid) * ramp))


@pytest.mark.parametrize("d", [(1, 0), (0, -2), (3, 5)])
def test_the_ideal_shift_is_a_roll_for_whole_samples(d):
    value = torch.randn(2, 3, 8, 6)
    geometry = geometry_of(value.shape, size=(16, 12), layout="NCHW")
    assert torch.equal(ideal_shift(value, d, geometry), torch.roll(value, d, dims=(2, 3)))
    # And the Fourier definition agrees with the roll up to rounding.
    fourier = _numpy_ideal_shift(value.double().numpy(), d)
    np.testing.assert_allclose(fourier, torch.roll(value, d, dims=(2, 3)).numpy(), atol=1e-6)


@pytest.mark.parametrize("d", [(0.5, 0), (0, 0.5), (0.5, 0.5), (0.25, -1.5)])
def test_the_ideal_shift_is_the_band_limited_fourier_shift(d):
    value = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    geometry = geometry_of(value.shape, size=(16, 16), layout="NCHW")
    expected = _numpy_ideal_shift(value.numpy(), d)
    np.testing.assert_allclose(ideal_shift(value, d, geometry).numpy(), expected, atol=1e-12)
    # Two half steps make a whole one, for a map without energy at the Nyquist frequency.
    smooth = torch.nn.functional.avg_pool2d(
        torch.randn(1, 1, 16, 16, dtype=torch.float64), 2
    )  # 8 x 8, still random; remove its Nyquist row and column to make the test exact
    spectrum = torch.fft.fft2(smooth)
    spectrum[..., 4, :] = 0
    spectrum[..., :, 4] = 0
    smooth = torch.fft.ifft2(spectrum).real
    g = geometry_of(smooth.shape, size=(16, 16), layout="NCHW")
    twice = ideal_shift(ideal_shift(smooth, (0.5, 0.5), g), (0.5, 0.5), g)
    torch.testing.assert_close(twice, torch.roll(smooth, (1, 1), dims=(2, 3)))


def test_the_ideal_shift_of_tokens_moves_the_patches_and_keeps_the_class_token():
    patches = torch.randn(2, 4, 4, 5, dtype=torch.float64)  # (B, g, g, D)
    cls = torch.randn(2, 1, 5, dtype=torch.float64)
    tokens = torch.cat([cls, patches.reshape(2, 16, 5)], dim=1)  # (B, 1 + g^2, D)
    geometry = geometry_of(tokens.shape, size=(16, 16), layout="NCHW")
    assert (geometry.kind, geometry.stride, geometry.extra) == ("tokens", 4, 1)
    shifted = ideal_shift(tokens, (0.5, -1.0), geometry)
    torch.testing.assert_close(shifted[:, :1], cls)
    expected = _numpy_ideal_shift(patches.permute(0, 3, 1, 2).numpy(), (0.5, -1.0))
    np.testing.assert_allclose(
        shifted[:, 1:].reshape(2, 4, 4, 5).permute(0, 3, 1, 2).numpy(), expected, atol=1e-12
    )
    # A flattened map (B, D, g^2) is a token grid too, with no class token.
    flat = patches.permute(0, 3, 1, 2).reshape(2, 5, 16)
    g = geometry_of(flat.shape, size=(16, 16), layout="NCHW")
    assert (g.kind, g.token_dim, g.extra) == ("tokens", 2, 0)
    np.testing.assert_allclose(
        ideal_shift(flat, (0.5, -1.0), g).reshape(2, 5, 4, 4).numpy(), expected, atol=1e-12
    )


def test_the_ideal_shift_of_an_nhwc_map_moves_its_spatial_axes():
    value = torch.randn(2, 8, 8, 3, dtype=torch.float64)
    geometry = geometry_of(value.shape, size=(16, 16), layout="NHWC")
    assert geometry.dims == (1, 2)
    expected = _numpy_ideal_shift(value.permute(0, 3, 1, 2).numpy(), (0.5, 0.0))
    np.testing.assert_allclose(
        ideal_shift(value, (0.5, 0.0), geometry).permute(0, 3, 1, 2).numpy(), expected, atol=1e-12
    )


# --- networks ------------------------------------------------------------------------------


def _gaussian_blur(channels: int, sigma: float) -> nn.Conv2d:
    """A fixed depthwise Gaussian low-pass (radius 3 sigma), padded circularly."""
    radius = math.ceil(3 * sigma)
    taps = torch.arange(-radius, radius + 1, dtype=torch.float32)
    line = torch.exp(-(taps**2) / (2 * sigma**2))
    line /= line.sum()
    blur = nn.Conv2d(
        channels,
        channels,
        2 * radius + 1,
        padding=radius,
        padding_mode="circular",
        groups=channels,
        bias=False,
    )
    with torch.no_grad():
        blur.weight.copy_((line[:, None] * line[None, :]).expand(channels, 1, -1, -1))
    blur.weight.requires_grad_(False)
    return blur


class StridedCircular(nn.Module):
    """Circular padding throughout; one stride-2 conv, optionally after a fixed low-pass."""

    def __init__(self, *, blur: bool = False, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.first = nn.Conv2d(3, 8, 3, padding=1, padding_mode="circular")
        self.blur = _gaussian_blur(8, 2.0) if blur else nn.Identity()
        self.strided = nn.Conv2d(8, 8, 3, stride=2, padding=1, padding_mode="circular")
        self.last = nn.Conv2d(8, 8, 3, padding=1, padding_mode="circular")
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blur(torch.relu(self.first(x)))
        x = torch.relu(self.last(torch.relu(self.strided(x))))
        return self.head(x.mean((2, 3)))


class ZeroPadded(nn.Module):
    """Stride 1 everywhere, with every padding form the torus rewrite knows: conv padding,
    max and average pooling padding, and an explicit zero pad before a valid conv."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.first = nn.Conv2d(3, 8, 3, padding=1)
        self.pool = nn.MaxPool2d(3, stride=1, padding=1)
        self.average = nn.AvgPool2d(3, stride=1, padding=1)
        self.valid = nn.Conv2d(8, 8, 3)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.average(self.pool(torch.relu(self.first(x))))
        x = torch.relu(self.valid(F.pad(x, (1, 1, 1, 1))))
        return self.head(x.mean((2, 3)))


class TransposedUpsampling(nn.Module):
    """A transposed convolution, whose padding crops its output: the torus rewrite does not
    know how to make that circular."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.first = nn.Conv2d(3, 4, 3, stride=2, padding=1, padding_mode="circular")
        self.up = nn.ConvTranspose2d(4, 4, 4, stride=2, padding=1)
        self.last = nn.Conv2d(4, 4, 3, padding=1, padding_mode="circular")
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.last(torch.relu(self.up(torch.relu(self.first(x))))))
        return self.head(x.mean((2, 3)))


def _profile(module: nn.Module, tmp_path, fmt: str, *, size: int = 16, count: int = 3):
    """The layer profile of `module` exported as `fmt`, on seeded noise inputs."""
    path = {
        "onnx": lambda: export_onnx(module, tmp_path / "m.onnx", size),
        "torch_export": lambda: export_program(module, tmp_path / "m.pt2", size),
    }[fmt]()
    inputs = torch.randn(count, 3, size, size, generator=torch.Generator().manual_seed(1))
    return layer_profile(load_runtime(path), inputs, layout="NCHW", size=(size, size))


def _maps(profile) -> list:
    return [e for e in profile.entries if e.kind != "non_spatial"]


FORMATS = ["torch_export", "onnx"]


# --- the proofs of issue 14 ----------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_circular_stride_one_net_with_global_pooling_has_no_error_anywhere(tmp_path, fmt):
    profile = _profile(GlobalPoolNet(stride=1), tmp_path, fmt)
    maps = _maps(profile)
    assert len(maps) == 4  # two convs and two ReLUs
    assert profile.torus is not None
    assert profile.torus.rewritten == []  # circular already: its own torus variant
    for entry in maps:
        for name in ("on_grid_error", "off_grid_error", "aliasing_error", "local_aliasing"):
            value = getattr(entry, name)
            assert value is not None, (entry.name, name, entry.reasons)
            assert value < 1e-6, (entry.name, name, value)
    assert profile.findings is not None
    assert profile.findings.aliasing_born_at is None
    assert profile.findings.position_leaks == []
    assert [p.map_size for p in profile.findings.global_pools] == [(16, 16)]


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_strided_conv_without_low_pass_is_where_aliasing_is_born(tmp_path, fmt):
    profile = _profile(StridedCircular(), tmp_path, fmt)
    maps = _maps(profile)
    strides = [e.stride for e in maps]
    assert strides == [1, 1, 2, 2, 2, 2]  # conv, relu | strided conv, relu, conv, relu
    first_strided = strides.index(2)
    for entry in maps:
        assert entry.on_grid_error is not None
        assert entry.on_grid_error < 1e-6  # circular: exactly equivariant on grid
    for entry in maps[first_strided:]:
        assert entry.aliasing_error is not None
        assert entry.aliasing_error > 0.05, entry.name
    local = [e.local_aliasing for e in maps]
    assert all(v is not None for v in local)
    for value in local[:first_strided]:
        assert value < 1e-6
    top = max(range(len(local)), key=lambda i: local[i] or 0.0)
    assert top in (first_strided, first_strided + 1)  # the strided conv, or the ReLU after it
    born = profile.findings.aliasing_born_at
    assert born is not None
    assert born.node == maps[top].name
    assert born.stride == 2
    assert born.local_aliasing == pytest.approx(local[top])


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_gaussian_low_pass_before_the_stride_cuts_aliasing_tenfold(tmp_path, fmt):
    plain = _maps(_profile(StridedCircular(), tmp_path, fmt))
    blurred = _maps(_profile(StridedCircular(blur=True), tmp_path, fmt))

    def strided_conv(maps):
        return next(e for e in maps if e.stride == 2)

    before, after = strided_conv(plain).aliasing_error, strided_conv(blurred).aliasing_error
    assert before is not None
    assert after is not None
    assert after * 10 <= before, (before, after)


@pytest.mark.parametrize("fmt", FORMATS)
def test_zero_padding_shows_on_grid_and_vanishes_on_the_torus(tmp_path, fmt):
    profile = _profile(ZeroPadded(), tmp_path, fmt)
    assert profile.torus is not None
    assert len(profile.torus.rewritten) == 4  # conv, max pool, average pool, the zero pad
    maps = _maps(profile)
    assert max(e.on_grid_error or 0.0 for e in maps) > 0.01  # borders
    assert maps[0].on_grid_error is not None
    assert maps[0].on_grid_error > 0
    for entry in maps:
        assert entry.aliasing_error is not None
        assert entry.aliasing_error < 1e-6, entry.name
        assert entry.local_aliasing is not None
        assert entry.local_aliasing < 1e-6, entry.name
    # Stride 1: the off-grid moves are whole steps, so off-grid is on-grid here.
    for entry in maps:
        assert entry.off_grid_error == pytest.approx(entry.on_grid_error, abs=1e-12)


@pytest.mark.parametrize(
    "module",
    [AliasingNet(seed=2), StridedCircular(seed=4), ZeroPadded(seed=5), DenseHeadNet(), TinyViT()],
    ids=["aliasing", "strided", "zero", "dense", "vit"],
)
def test_onnx_and_torch_export_give_the_same_profile(tmp_path, module):
    profiles = {fmt: _profile(module, tmp_path, fmt) for fmt in FORMATS}
    maps = {fmt: _maps(p) for fmt, p in profiles.items()}
    # The ONNX exporter splits a linear layer on tokens into MatMul and Add (the bias): the
    # Add is what torch.export calls the linear's output.
    onnx_maps = maps["onnx"]
    maps["onnx"] = [
        e
        for i, e in enumerate(onnx_maps)
        if not (
            e.op_type == "MatMul" and i + 1 < len(onnx_maps) and onnx_maps[i + 1].op_type == "Add"
        )
    ]
    assert len(maps["onnx"]) == len(maps["torch_export"])
    for onnx_entry, fx_entry in zip(maps["onnx"], maps["torch_export"], strict=True):
        assert (onnx_entry.kind, onnx_entry.stride) == (fx_entry.kind, fx_entry.stride)
        for name in ("on_grid_error", "off_grid_error", "aliasing_error", "local_aliasing"):
            ours, theirs = getattr(onnx_entry, name), getattr(fx_entry, name)
            assert (ours is None) == (theirs is None), (fx_entry.name, name)
            if ours is not None:
                assert ours == pytest.approx(theirs, abs=1e-5), (fx_entry.name, name)
        assert onnx_entry.receptive_field == fx_entry.receptive_field, fx_entry.name
    roles = {
        fmt: [(e.role, e.role_detail) for e in p.entries if e.role is not None]
        for fmt, p in profiles.items()
    }
    assert roles["onnx"] == roles["torch_export"]
    assert roles["onnx"]  # every one of these nets pools or has a dense head


def test_an_unknown_padding_op_leaves_aliasing_null_and_names_the_op(tmp_path):
    for fmt, op in (("torch_export", "conv_transpose2d"), ("onnx", "ConvTranspose")):
        profile = _profile(TransposedUpsampling(), tmp_path, fmt)
        assert profile.torus is not None
        assert any(op in reason for reason in profile.torus.refused.values()), profile.torus
        maps = _maps(profile)
        up = next(i for i, e in enumerate(maps) if op in e.op_type)
        assert maps[0].aliasing_error is not None  # upstream of the transposed conv
        assert maps[0].local_aliasing is not None
        for entry in maps[up:]:
            assert entry.aliasing_error is None
            assert entry.local_aliasing is None
            assert op in entry.reasons["aliasing_error"]
            assert op in entry.reasons["local_aliasing"]
            assert entry.off_grid_error is not None  # the deployed network still runs


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_torus_variant_that_fails_on_a_later_probe_leaves_no_partial_aliasing(
    tmp_path, monkeypatch, fmt
):
    """On a CPU the probes run one at a time: a torus run that fails on the second probe
    (injected) must not leave the first probe's aliasing as if it were the profile's."""
    graph_type = OnnxGraph if fmt == "onnx" else FxGraph
    real = graph_type.run
    torus_runs = []

    def failing_second_probe(self, x, *, torus, keep):
        if torus:
            torus_runs.append(len(x))
            if len(torus_runs) == 5:  # probe 2's reference run: 1 + 3 off-grid runs per probe
                raise RuntimeError("injected failure")
        return real(self, x, torus=torus, keep=keep)

    monkeypatch.setattr(graph_type, "run", failing_second_probe)
    profile = _profile(ZeroPadded(), tmp_path, fmt)
    assert torus_runs == [1] * 5  # one probe at a time, no torus run after the failure
    assert profile.torus is not None
    assert not profile.torus.available
    assert "injected failure" in (profile.torus.reason or "")
    maps = _maps(profile)
    assert maps
    for entry in maps:
        assert entry.aliasing_error is None
        assert entry.local_aliasing is None
        assert "injected failure" in entry.reasons["aliasing_error"]
        assert "injected failure" in entry.reasons["local_aliasing"]
        assert entry.off_grid_error is not None  # the deployed network's errors stay


class CircularZeroPadded(ZeroPadded):
    """ZeroPadded's torus variant written by hand: every padding wraps around."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        def wrap(t: torch.Tensor) -> torch.Tensor:
            return F.pad(t, (1, 1, 1, 1), mode="circular")

        x = torch.relu(F.conv2d(wrap(x), self.first.weight, self.first.bias))
        x = F.avg_pool2d(wrap(F.max_pool2d(wrap(x), 3, stride=1)), 3, stride=1)
        x = torch.relu(self.valid(wrap(x)))
        return self.head(x.mean((2, 3)))


def test_the_torch_export_graph_runs_as_code_that_returns_what_it_keeps(tmp_path):
    """FxGraph.run compiles the graph to code that returns the nodes it keeps: deployed, their
    values are those of torch.fx's interpreter (the runtime's forward_with_layers); on the
    torus variant, those of the same net with every padding circular, written by hand."""
    module = ZeroPadded(seed=3).eval()
    model = load_runtime(export_program(module, tmp_path / "m.pt2"))
    graph = FxGraph(model.graph_module)
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    _, recorded = model.forward_with_layers(x)
    names = graph.layer_names()
    assert [layer.name for layer in recorded] == names
    deployed = graph.run(x, torus=False, keep=set(names))
    assert set(deployed) == set(names)
    for layer in recorded:
        assert torch.equal(deployed[layer.name].float(), layer.value), layer.name
    middle = names[len(names) // 2]
    assert set(graph.run(x, torus=False, keep={middle})) == {middle}

    last = [n.name for n in model.graph_module.graph.nodes if n.op == "call_function"][-1]
    graph.prepare_torus(receptive_fields(graph.static, size=(16, 16), layout="NCHW"))
    torus = graph.run(x, torus=True, keep={last, graph.input_name})
    assert torch.equal(torus[graph.input_name], x)
    with torch.no_grad():
        circular = CircularZeroPadded(seed=3).eval()
        circular.load_state_dict(module.state_dict())
        expected = circular(x)
        assert not torch.allclose(module(x), expected, atol=1e-3)  # the padding matters here
    torch.testing.assert_close(torus[last], expected, atol=1e-5, rtol=1e-5)


def test_torchscript_says_what_is_not_available_for_its_format(tmp_path):
    paths = export_all(AliasingNet(), tmp_path)
    inputs = torch.randn(2, 3, 16, 16)
    profile = layer_profile(
        load_runtime(paths["torchscript"]), inputs, layout="NCHW", size=(16, 16)
    )
    assert profile.available
    maps = _maps(profile)
    assert maps
    for entry in maps:
        assert entry.on_grid_error is not None  # the deployed errors need no graph
        assert entry.off_grid_error is not None
        for name in ("aliasing_error", "local_aliasing", "receptive_field"):
            assert getattr(entry, name) is None
            assert entry.reasons[name].startswith("not available for this format: TorchScript")
    assert profile.findings is not None
    assert profile.findings.aliasing_missing is not None
    assert profile.findings.aliasing_missing.startswith("not available for this format")
    assert any("not available for this format" in line for line in profile.findings.summary)


def _naive_errors(outputs_at, shifts, strides, count):
    """mean over probes and shifts of ||F_k(roll_t x) - T_{t/j} F_k(x)|| / ||F_k(x)||, with
    numpy's FFT for the ideal shift, per layer k; `outputs_at(t)` lists the F_k(roll_t x)."""
    reference = outputs_at((0, 0))
    errors = []
    for k, stride in enumerate(strides):
        values = []
        for t in shifts(stride):
            moved = outputs_at(t)[k].double().numpy()
            expected = _numpy_ideal_shift(
                reference[k].double().numpy(), (t[0] / stride, t[1] / stride)
            )
            for i in range(count):
                distance = np.linalg.norm(moved[i] - expected[i])
                values.append(distance / np.linalg.norm(reference[k][i].double().numpy()))
        errors.append(float(np.mean(values)))
    return errors


def _circular(conv: nn.Conv2d):
    """The torus form of a zero-padded conv: the same weights, on a circularly wrapped input."""
    pad = conv.padding[0]
    return lambda h: F.conv2d(
        F.pad(h, (pad,) * 4, mode="circular"), conv.weight, conv.bias, conv.stride
    )


def _naive_profile(deployed_layers, torus_layers, x, strides, input_strides):
    """on_grid, off_grid, aliasing and local errors per layer, straight from science.md: the
    layers run one after the other (deployed and torus forms), numpy's FFT for every ideal
    shift, each torus layer alone on its input shifted ideally at the input's own stride."""
    count = x.shape[0]

    def chain(layers):
        def outputs_at(t):
            h = torch.roll(x, t, dims=(2, 3))
            outputs = []
            for layer in layers:
                h = layer(h)
                outputs.append(h.detach())
            return outputs

        return outputs_at

    deployed, torus = chain(deployed_layers), chain(torus_layers)
    with torch.no_grad():
        on_grid = _naive_errors(deployed, lambda j: [(j, 0), (0, j), (j, j)], strides, count)
        off_grid = _naive_errors(deployed, lambda j: [(1, 0), (0, 1), (1, 1)], strides, count)
        aliasing = _naive_errors(torus, lambda j: [(1, 0), (0, 1), (1, 1)], strides, count)
        inputs = [x, *torus((0, 0))[:-1]]
        local = []
        for layer, h, j_in, j_out in zip(torus_layers, inputs, input_strides, strides, strict=True):
            base = layer(h).double().numpy()
            values = []
            for t in [(1, 0), (0, 1), (1, 1)]:
                moved_input = torch.from_numpy(
                    _numpy_ideal_shift(h.double().numpy(), (t[0] / j_in, t[1] / j_in))
                ).float()
                moved = layer(moved_input).double().numpy()
                expected = _numpy_ideal_shift(base, (t[0] / j_out, t[1] / j_out))
                values += [
                    np.linalg.norm(moved[i] - expected[i]) / np.linalg.norm(base[i])
                    for i in range(count)
                ]
            local.append(float(np.mean(values)))
    return {"on_grid": on_grid, "off_grid": off_grid, "aliasing": aliasing, "local": local}


def _assert_agrees(maps, naive, strides):
    assert [e.stride for e in maps] == strides
    for k, entry in enumerate(maps):
        assert entry.on_grid_error == pytest.approx(naive["on_grid"][k], abs=1e-5), entry.name
        assert entry.relative_error == entry.on_grid_error
        assert entry.off_grid_error == pytest.approx(naive["off_grid"][k], abs=1e-5), entry.name
        assert entry.aliasing_error == pytest.approx(naive["aliasing"][k], abs=1e-5), entry.name
        assert entry.local_aliasing == pytest.approx(naive["local"][k], abs=1e-5), entry.name


@pytest.mark.parametrize("fmt", FORMATS)
def test_the_engine_agrees_with_a_naive_module_by_module_profile(tmp_path, fmt):
    net = AliasingNet(seed=3).eval()
    conv1, _, _, conv2, _ = net.features  # conv, ReLU, max pool 2, conv, ReLU
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    torus_layers = [
        _circular(conv1),
        torch.relu,
        lambda h: F.max_pool2d(h, 2),
        _circular(conv2),
        torch.relu,
    ]
    strides = [2, 2, 4, 4, 4]
    naive = _naive_profile(list(net.features), torus_layers, x, strides, [1, 2, 2, 4, 4])
    path = (
        export_onnx(net, tmp_path / "m.onnx")
        if fmt == "onnx"
        else export_program(net, tmp_path / "m.pt2")
    )
    maps = _maps(layer_profile(load_runtime(path), x, layout="NCHW", size=(16, 16)))
    _assert_agrees(maps, naive, strides)
    # Zero padding: the deployed and the torus variant differ, so both were really measured.
    assert any(abs(a - b) > 1e-3 for a, b in zip(naive["off_grid"], naive["aliasing"], strict=True))


class NormalisedStrided(nn.Module):
    """A zero-padded stride-2 conv, a batch norm after its ReLU (which no exporter folds into
    the conv), a conv with its own batch norm: every norm with statistics far from 0 and 1."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.BatchNorm2d(8),
            nn.Conv2d(8, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
        )
        self.head = nn.Linear(8, 4)
        with torch.no_grad():
            for norm in (self.features[2], self.features[4]):
                norm.running_mean.uniform_(-2, 2)
                norm.running_var.uniform_(0.2, 3)
                norm.weight.uniform_(-2, 2)
                norm.bias.uniform_(-1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean((2, 3)))


@pytest.mark.parametrize("fmt", FORMATS)
def test_batch_norms_measured_through_their_inputs_agree_with_the_naive_profile(tmp_path, fmt):
    # The profile takes a batch norm's fractional errors from its input's per-channel residuals
    # (channel_affine.py); here every one of them is checked against the direct computation.
    net = NormalisedStrided(seed=4).eval()
    conv1, relu, norm1, conv2, norm2, _ = net.features
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    if fmt == "torch_export":  # every batch norm a node of its own
        path = export_program(net, tmp_path / "m.pt2")
        deployed = list(net.features)
        torus = [_circular(conv1), relu, norm1, _circular(conv2), norm2, relu]
        norms = ["aten.batch_norm.default"] * 2
    else:  # the exporter folds the second into its conv
        path = export_onnx(net, tmp_path / "m.onnx")
        deployed = [conv1, relu, norm1, lambda h: norm2(conv2(h)), relu]
        torus = [_circular(conv1), relu, norm1, lambda h: norm2(_circular(conv2)(h)), relu]
        norms = ["BatchNormalization"]
    strides = [2] * len(deployed)
    naive = _naive_profile(deployed, torus, x, strides, [1] + [2] * (len(deployed) - 1))
    maps = _maps(layer_profile(load_runtime(path), x, layout="NCHW", size=(16, 16)))
    assert [e.op_type for e in maps if "atch" in e.op_type] == norms
    _assert_agrees(maps, naive, strides)
    # A batch norm adds no aliasing of its own (it commutes with every ideal shift), and its
    # errors are not its input's: the scales weigh the channels differently.
    for k, entry in enumerate(maps):
        if "atch" in entry.op_type:
            assert entry.local_aliasing == pytest.approx(0, abs=1e-6)
            assert entry.off_grid_error != pytest.approx(maps[k - 1].off_grid_error, rel=1e-3)


def test_a_batch_norm_is_a_per_channel_affine_map_of_its_input_only_in_inference(tmp_path):
    net = NormalisedStrided(seed=5).eval()
    graph = FxGraph(torch.export.load(export_program(net, tmp_path / "m.pt2")).module())
    h = torch.randn(2, 8, 8, 8)
    for name, norm in (("batch_norm", net.features[2]), ("batch_norm_1", net.features[4])):
        affine = graph.channel_affine(name)
        assert affine is not None
        assert affine.source == ("relu" if name == "batch_norm" else "conv2d_1")
        with torch.no_grad():
            torch.testing.assert_close(affine.apply(h), norm(h), rtol=1e-5, atol=1e-5)
    assert graph.channel_affine("conv2d") is None
    training = torch.export.export(net.train(), (torch.randn(2, 3, 16, 16),)).module()
    norms = [n.name for n in training.graph.nodes if "batch_norm" in str(n.target)]
    assert norms  # the training form has its norms, over the batch's own statistics
    assert all(FxGraph(training).channel_affine(name) is None for name in norms)
    # ONNX: the norm after the ReLU stays a BatchNormalization node (the other is folded).
    onnx_graph, _ = open_graph(load_runtime(export_onnx(net.eval(), tmp_path / "m.onnx")))
    assert isinstance(onnx_graph, OnnxGraph)
    (name,) = [n.name for n in onnx_graph.static.nodes if n.op_type == "BatchNormalization"]
    affine = onnx_graph.channel_affine(name)
    assert affine is not None
    relu_out = next(n.name for n in onnx_graph.static.nodes if n.op_type == "Relu")
    assert affine.source == relu_out
    with torch.no_grad():
        torch.testing.assert_close(affine.apply(h), net.features[2](h), rtol=1e-5, atol=1e-5)
    assert all(
        onnx_graph.channel_affine(n.name) is None
        for n in onnx_graph.static.nodes
        if n.op_type != "BatchNormalization"
    )


def test_an_audit_carries_the_profile_its_findings_and_their_cost(tmp_path):
    from shiftaudit.config import AuditConfig
    from shiftaudit.cost import layer_profile_forward_passes
    from shiftaudit.engine import run_audit
    from shiftaudit.profile.findings import findings_lines
    from shiftaudit.report import SCHEMA_VERSION, Report
    from shiftaudit.terminal import format_summary

    model = export_program(AliasingNet(), tmp_path / "m.pt2")
    probes = noise_probes(tmp_path / "probes", 6)
    config = AuditConfig.model_validate(
        {
            "preprocess": {"input_size": [16, 16], "resize": 16},
            "bootstrap": 0,
            "layers": {"probes": 3},
        }
    )
    report = run_audit(model, probes, config)
    assert report.schema_version == SCHEMA_VERSION == "1.2"
    layers = report.layers
    assert layers.findings is not None
    assert layers.off_grid_shifts == [(1, 0), (0, 1), (1, 1)]
    lines = findings_lines(report)
    assert lines == layers.findings.summary
    assert lines[0].startswith("aliasing born at ")
    assert "field covers the input from " in lines[1]
    summary = format_summary(report)
    for line in lines:
        assert line in summary
    assert "largest equivariance error" not in summary  # the 1.1 line is gone
    strides = len({e.stride for e in layers.entries if e.stride is not None})
    assert strides == 2
    assert layers.forward_passes is not None
    assert 0 < layers.forward_passes <= layer_profile_forward_passes(probes=3, strides=strides)
    assert "layers" in report.provenance.stage_seconds
    # A 1.1 report, without the fields 1.2 added, is still read; its summary says what it has.
    old = report.model_dump(mode="json")
    old["schema_version"] = "1.1"
    for key in ("off_grid_shifts", "torus", "forward_passes", "findings"):
        old["layers"].pop(key)
    new_fields = (
        "on_grid_error", "off_grid_error", "aliasing_error", "local_aliasing",
        "receptive_field", "role", "role_detail", "reasons",
    )  # fmt: skip
    for entry in old["layers"]["entries"]:
        for key in new_fields:
            entry.pop(key)
    legacy = Report.model_validate(old)
    assert legacy.schema_version == "1.1"
    (line,) = findings_lines(legacy)
    assert line.startswith("5 layers profiled; largest on-grid error")
    with pytest.raises(ValueError, match="schema_version"):
        Report.model_validate({**old, "schema_version": "2.0"})


@pytest.mark.parametrize(
    "module",
    [GlobalPoolNet(stride=2), AliasingNet(), ZeroPadded(), TinyViT()],
    ids=["circular", "aliasing", "zero", "vit"],
)
@pytest.mark.parametrize("fmt", FORMATS)
def test_the_profile_spends_no_more_passes_than_its_published_bound(tmp_path, module, fmt):
    from shiftaudit.cost import layer_profile_forward_passes

    profile = _profile(module, tmp_path, fmt, count=2)
    strides = len({e.stride for e in profile.entries if e.stride is not None})
    assert profile.forward_passes is not None
    assert profile.forward_passes <= layer_profile_forward_passes(probes=2, strides=strides)


@pytest.mark.parametrize("shape", [(2, 3, 8, 8), (2, 3, 7, 9), (1, 2, 6, 5)])
def test_the_real_fft_shift_equals_the_complex_definition_on_every_grid(shape):
    """rfft2 with the Hermitian part of the ramp is exactly Re IDFT(DFT(F) R), also on the
    Nyquist lines of even axes, where the two differ before R is made Hermitian."""
    value = torch.randn(shape, dtype=torch.float64)
    geometry = geometry_of(value.shape, size=(shape[2] * 2, shape[3] * 2), layout="NCHW")
    assert geometry.spatial
    shifter = IdealShifter(value, geometry)
    for d in [(0.5, 0.0), (0.0, 0.5), (0.5, 0.5), (0.25, -1.5), (1 / 3, 2 / 3)]:
        expected = _numpy_ideal_shift(value.numpy(), d)
        np.testing.assert_allclose(shifter(d).numpy(), expected, atol=1e-12)
        np.testing.assert_allclose(ideal_shift(value, d, geometry).numpy(), expected, atol=1e-12)


def test_shards_carry_the_profile_of_the_shard_that_holds_probe_zero(tmp_path):
    from shiftaudit.config import AuditConfig
    from shiftaudit.engine import merge_shards, sweep_shard

    model = export_program(AliasingNet(), tmp_path / "m.pt2")
    probes = noise_probes(tmp_path / "probes", 5)
    config = AuditConfig.model_validate(
        {
            "preprocess": {"input_size": [16, 16], "resize": 16},
            "bootstrap": 0,
            "layers": {"probes": 2},
        }
    )
    later, first = (sweep_shard(model, probes, config, probes=span) for span in ((2, 5), (0, 2)))
    assert later.layers is None
    assert first.layers is not None
    assert first.layers.findings is not None
    merged = merge_shards([later, first], config)
    assert merged.layers == first.layers


@pytest.mark.parametrize(
    ("shape", "size", "layout"),
    [
        ((3, 4, 8, 8), (16, 16), "NCHW"),
        ((3, 4, 7, 9), (14, 18), "NCHW"),
        ((2, 6, 5, 3), (12, 10), "NHWC"),
        ((2, 17, 5), (16, 16), "NCHW"),
    ],
    ids=["even", "odd", "nhwc", "tokens"],
)
def test_distances_by_parseval_equal_the_distance_on_the_grid(shape, size, layout):
    reference = torch.randn(shape, dtype=torch.float64)
    shifted = torch.randn(shape, dtype=torch.float64)
    geometry = geometry_of(reference.shape, size=size, layout=layout)
    shifter = IdealShifter(reference, geometry)
    for d in [(0.5, 0.0), (0.5, 0.5), (1 / 3, -0.25), (1, 2)]:
        grid_difference = positions(shifted, geometry) - positions(shifter(d), geometry)
        expected = grid_difference.reshape(shape[0], -1).norm(dim=1)
        torch.testing.assert_close(shifter.distances(shifted, d), expected, rtol=1e-12, atol=0)


class PoolIndices(nn.Module):
    """Max pooling with indices, the integer index map read further on."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled, indices = F.max_pool2d(self.conv(x), 2, return_indices=True)
        return (pooled + 1e-3 * indices.float()).mean((2, 3))


@pytest.mark.parametrize("fmt", FORMATS)
def test_integer_index_maps_are_compared_as_numbers_and_never_shifted(tmp_path, fmt):
    profile = _profile(PoolIndices(), tmp_path, fmt)
    assert profile.torus is not None
    assert profile.torus.available, profile.torus.reason
    maps = _maps(profile)
    assert maps[0].local_aliasing is not None  # the conv, upstream of any index
    assert all(e.aliasing_error is not None for e in maps)
    readers = [e for e in maps if "integer values" in e.reasons.get("local_aliasing", "")]
    assert readers, [e.reasons for e in maps]  # the cast of the indices to float
    assert all(e.local_aliasing is None for e in readers)
