"""Static receptive fields equal hand computations (Dang Ha The Hien's arithmetic).

Each net is read as an ONNX file and as a torch.export program, without running it; pixel i
of the input is centred at i + 1/2, so a field of size r centred at c spans [c - r/2, c + r/2].
"""

from __future__ import annotations

import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from shiftaudit.profile.access import open_graph
from shiftaudit.profile.graph import Window
from shiftaudit.profile.receptive_fields import Field, border_fractions, receptive_fields
from shiftaudit.runtimes import load_runtime

from .nets import export_onnx, export_program

FORMATS = ["onnx", "torch_export"]


def _analysis(module: nn.Module, tmp_path, fmt: str, size: int = 16):
    path = (
        export_onnx(module, tmp_path / "m.onnx", size)
        if fmt == "onnx"
        else export_program(module, tmp_path / "m.pt2", size)
    )
    graph, reason = open_graph(load_runtime(path))
    assert graph is not None, reason
    return graph, receptive_fields(graph.static, size=(size, size), layout="NCHW")


def _windows(graph, analysis) -> list[Field]:
    """The fields after every conv / pool, in graph order."""
    fields = []
    for node in graph.static.nodes:
        if isinstance(node.op, Window):
            state = analysis.states[node.name]
            assert isinstance(state, Field), state
            fields.append(state)
    return fields


def _last_field(graph, analysis) -> Field:
    state = analysis.states[graph.static.nodes[-1].name]
    assert isinstance(state, Field), state
    return state


def _yx(field: Field) -> tuple[tuple[float, float], tuple[float, float], tuple[float, float]]:
    return (
        (field.y.size, field.x.size),
        (field.y.jump, field.x.jump),
        (field.y.start, field.x.start),
    )


def _hand_border(size: float, jump: float, start: float, units: int, side: int) -> float:
    """Share of units i whose field [c - size/2, c + size/2], c = start + i jump, leaves
    [0, side]."""
    past = [
        i
        for i in range(units)
        if start + i * jump - size / 2 < 0 or start + i * jump + size / 2 > side
    ]
    return len(past) / units


class ConvPoolConv(nn.Module):
    """C3x3/1 -> M2x2/2 -> C3x3/1, the example of science.md."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Conv2d(3, 4, 3, padding=1)
        self.second = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(F.max_pool2d(torch.relu(self.first(x)), 2)).mean((2, 3))


@pytest.mark.parametrize("fmt", FORMATS)
def test_conv_pool_conv_has_a_field_of_eight_with_jump_two(tmp_path, fmt):
    graph, analysis = _analysis(ConvPoolConv(), tmp_path, fmt)
    conv, pool, last = _windows(graph, analysis)
    # rf: 1 + 2 = 3; + 1 * 1 = 4; + 2 * 2 = 8. start: 0.5; 0.5 + 0.5 = 1.0; 1.0 + (1 - 1) * 2.
    assert _yx(conv) == ((3, 3), (1, 1), (0.5, 0.5))
    assert _yx(pool) == ((4, 4), (2, 2), (1.0, 1.0))
    assert _yx(last) == ((8, 8), (2, 2), (1.0, 1.0))
    by, bx, both = border_fractions(last, size=(16, 16))
    hand = _hand_border(8, 2, 1.0, 8, 16)
    assert hand == 0.5  # units 0, 1 and 6, 7 of 8 see padding
    assert (by, bx) == (hand, hand)
    assert both == pytest.approx(1 - (1 - hand) ** 2)
    # The global mean is the union of the 8 x 8 units' fields: 8 + 7 * 2 = 22, a global pool.
    pooled = _last_field(graph, analysis)
    assert (pooled.y.size, pooled.y.mixed, pooled.y.units) == (22, True, 1)
    assert [mark.role for mark in analysis.roles.values()] == ["global_pool"]


class ResidualBlock(nn.Module):
    """conv 3x3/2 -> relu -> conv 3x3/1, plus a strided 1x1 shortcut; `pooled_shortcut`
    puts a 2x2 average pool before a 1x1 shortcut instead: its units are centred elsewhere."""

    def __init__(self, pooled_shortcut: bool = False) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.b = nn.Conv2d(4, 4, 3, padding=1)
        self.shortcut = nn.Conv2d(3, 4, 1, stride=1 if pooled_shortcut else 2)
        self.pooled = pooled_shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = self.shortcut(F.avg_pool2d(x, 2) if self.pooled else x)
        return torch.relu(self.b(torch.relu(self.a(x))) + skip).mean((2, 3))


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_residual_block_takes_the_larger_field_and_checks_the_grids_agree(tmp_path, fmt):
    graph, analysis = _analysis(ResidualBlock(), tmp_path, fmt)
    # The exporters may list the shortcut first: tell the three apart by their fields.
    shortcut, a, b = sorted(_windows(graph, analysis), key=lambda f: f.y.size)
    assert _yx(a) == ((3, 3), (2, 2), (0.5, 0.5))
    assert _yx(b) == ((7, 7), (2, 2), (0.5, 0.5))  # 3 + 2 * 2
    assert _yx(shortcut) == ((1, 1), (2, 2), (0.5, 0.5))  # a 1x1 at stride 2: every other pixel
    add = next(n for n in graph.static.nodes if n.op_type in ("Add", "aten.add.Tensor"))
    merged = analysis.states[add.name]
    assert isinstance(merged, Field)
    assert _yx(merged) == ((7, 7), (2, 2), (0.5, 0.5))
    assert merged.note is None


@pytest.mark.parametrize("fmt", FORMATS)
def test_inputs_on_grids_with_different_centres_are_reported(tmp_path, fmt):
    graph, analysis = _analysis(ResidualBlock(pooled_shortcut=True), tmp_path, fmt)
    add = next(n for n in graph.static.nodes if n.op_type in ("Add", "aten.add.Tensor"))
    merged = analysis.states[add.name]
    assert isinstance(merged, Field)
    # The pool's units sit at 0.5 + 0.5 = 1.0, the conv path's at 0.5.
    assert merged.note is not None
    assert "start 0.5" in merged.note
    assert "start 1" in merged.note


class Dilated(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.dilated = nn.Conv2d(3, 4, 3, padding=2, dilation=2)
        self.plain = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.plain(torch.relu(self.dilated(x))).mean((2, 3))


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_dilated_conv_widens_the_field_by_its_effective_kernel(tmp_path, fmt):
    graph, analysis = _analysis(Dilated(), tmp_path, fmt)
    dilated, plain = _windows(graph, analysis)
    assert _yx(dilated) == ((5, 5), (1, 1), (0.5, 0.5))  # k_eff = 2 * (3 - 1) + 1
    assert _yx(plain) == ((7, 7), (1, 1), (0.5, 0.5))


class ExplicitSamePad(nn.Module):
    """TensorFlow's "same" at stride 2 written out: pad (0, 1) on each axis, then a valid conv."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1))).mean((2, 3))


def _same_conv_onnx(path, auto_pad: str) -> None:
    """Conv k3 s2 with auto_pad on a 16 x 16 input, then a global average pool."""
    weight = numpy_helper.from_array(torch.randn(4, 3, 3, 3).numpy(), "w")
    graph = helper.make_graph(
        [
            helper.make_node(
                "Conv",
                ["input", "w"],
                ["conv"],
                kernel_shape=[3, 3],
                strides=[2, 2],
                auto_pad=auto_pad,
            ),
            helper.make_node("GlobalAveragePool", ["conv"], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["logits"]),
        ],
        "same",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 4])],
        initializer=[weight],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


@pytest.mark.parametrize(("auto_pad", "start"), [("SAME_UPPER", 1.5), ("SAME_LOWER", 0.5)])
def test_asymmetric_same_padding_at_stride_two(tmp_path, auto_pad, start):
    # ceil(16 / 2) = 8 outputs need (8 - 1) 2 + 3 - 16 = 1 pad: after (UPPER) or before (LOWER).
    _same_conv_onnx(tmp_path / "same.onnx", auto_pad)
    graph, reason = open_graph(load_runtime(tmp_path / "same.onnx"))
    assert graph is not None, reason
    analysis = receptive_fields(graph.static, size=(16, 16), layout="NCHW")
    (conv,) = _windows(graph, analysis)
    assert _yx(conv) == ((3, 3), (2, 2), (start, start))
    assert conv.y.units == 8


@pytest.mark.parametrize("fmt", FORMATS)
def test_torchs_explicit_asymmetric_pad_matches_same_upper(tmp_path, fmt):
    graph, analysis = _analysis(ExplicitSamePad(), tmp_path, fmt)
    (conv,) = _windows(graph, analysis)
    assert _yx(conv) == ((3, 3), (2, 2), (1.5, 1.5))
    # The last unit, centred at 1.5 + 7 * 2 = 15.5, sees [14, 17]: past the image's 16.
    assert border_fractions(conv, size=(16, 16))[0] == _hand_border(3, 2, 1.5, 8, 16) == 1 / 8


class PatchEmbedding(nn.Module):
    """ViT-style: a 16/16 patch conv, tokens with a class token, a token MLP, a mean."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, 8, 16, stride=16)
        self.cls = nn.Parameter(torch.randn(1, 1, 8))
        self.mlp = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls.expand(x.shape[0], -1, -1), tokens], dim=1)
        return torch.relu(self.mlp(tokens)).mean(dim=1)


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_patch_embedding_conv_of_sixteen_tiles_the_input(tmp_path, fmt):
    graph, analysis = _analysis(PatchEmbedding(), tmp_path, fmt, size=64)
    (embed,) = _windows(graph, analysis)
    assert _yx(embed) == ((16, 16), (16, 16), (8.0, 8.0))  # 0.5 + (15 / 2) * 1
    assert border_fractions(embed, size=(64, 64)) == (0.0, 0.0, 0.0)  # patches tile exactly
    # The token MLP acts per token: the field stays a patch; the mean over tokens is global.
    mlp = next(n for n in graph.static.nodes if n.op_type in ("MatMul", "aten.linear.default"))
    assert _yx(analysis.states[mlp.name]) == ((16, 16), (16, 16), (8.0, 8.0))
    pooled = _last_field(graph, analysis)
    assert (pooled.y.size, pooled.x.size, pooled.y.mixed) == (64, 64, True)  # 16 + 3 * 16
    assert [m.role for m in analysis.roles.values()] == ["global_pool"]
    assert next(iter(analysis.roles.values())).grid == (4, 4)


class FlattenHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=4, padding=1)
        self.head = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x)).flatten(1))


class PoolHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=4, padding=1)
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.adaptive_avg_pool2d(torch.relu(self.conv(x)), 1).flatten(1))


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_dense_head_on_a_flattened_map_is_a_position_leak(tmp_path, fmt):
    graph, analysis = _analysis(FlattenHead(), tmp_path, fmt)
    (mark,) = analysis.roles.values()
    assert mark.role == "position_leak"
    assert mark.grid == (4, 4)
    head = graph.static.nodes[-1].name
    assert head in analysis.roles
    field = analysis.states[head]
    assert isinstance(field, Field)
    # The union of the 4 x 4 units' fields: 3 + 3 * 4 = 15, centred on 0.5 + 1.5 * 4 = 6.5.
    assert (field.y.size, field.y.start, field.y.mixed) == (15, 6.5, True)


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_global_average_pool_head_is_a_global_pool_and_no_leak(tmp_path, fmt):
    graph, analysis = _analysis(PoolHead(), tmp_path, fmt)
    roles = [(mark.role, mark.grid) for mark in analysis.roles.values()]
    assert roles == [("global_pool", (4, 4))]
    head = graph.static.nodes[-1].name
    assert head not in analysis.roles  # a dense layer on the pooled 1 x 1 map reads no position
    field = analysis.states[head]
    assert isinstance(field, Field)
    assert (field.y.size, field.y.mixed, field.y.units) == (15, True, 1)
