"""Tests for shiftaudit.model_files and shiftaudit.runtimes: format sniffing, safe loading,
logits, layers and refusals."""

from __future__ import annotations

import builtins
import io
import json
import os
import pickle
import shutil
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from torch import nn

from shiftaudit.errors import ModelError
from shiftaudit.input_contract import DeclaredInput, check_input_shape
from shiftaudit.model_files import ModelFormat, sniff_model_format
from shiftaudit.runtimes import Runtime, load_runtime

FORMATS = [ModelFormat.ONNX, ModelFormat.TORCHSCRIPT, ModelFormat.EXPORTED_PROGRAM]


class SmallNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, padding_mode="circular")
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flatten(self.pool(self.conv2(self.relu(self.conv1(x))))))


class Payload:
    """Unpickling this creates ``target``: proof that an unpickler ran attacker-chosen code."""

    def __init__(self, target: Path, via: str) -> None:
        self.target, self.via = target, via

    def __reduce__(self):
        if self.via == "system":
            return (os.system, (f"touch '{self.target}'",))
        return (builtins.open, (str(self.target), "w"))


@pytest.fixture(scope="module")
def net() -> nn.Module:
    torch.manual_seed(0)
    return SmallNet().eval()


@pytest.fixture(scope="module")
def files(net: nn.Module, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("models")
    x = torch.randn(2, 3, 32, 32)
    paths = {f: d / name for f, name in zip(FORMATS, ["m.onnx", "m.ts", "m.pt2"], strict=True)}
    with warnings.catch_warnings():  # the legacy (TorchScript-based) ONNX exporter warns
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            net,
            (x,),
            str(paths[ModelFormat.ONNX]),
            dynamo=False,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
        )
    torch.jit.trace(net, x).save(str(paths[ModelFormat.TORCHSCRIPT]))
    batch = torch.export.Dim("batch", min=1, max=64)
    ep = torch.export.export(net, (x,), dynamic_shapes={"x": {0: batch}})
    torch.export.save(ep, str(paths[ModelFormat.EXPORTED_PROGRAM]))
    torch.save(net.state_dict(), d / "state_dict.pt")
    torch.save(net, d / "module.pt")
    torch.save(net, d / "legacy.pt", _use_new_zipfile_serialization=False)
    return {str(k): v for k, v in paths.items()} | {
        p.stem: p for p in (d / "state_dict.pt", d / "module.pt", d / "legacy.pt")
    }


@pytest.fixture(scope="module")
def loaded(files: dict[str, Path]) -> dict[str, Runtime]:
    return {str(f): load_runtime(files[str(f)]) for f in FORMATS}


def rewrite_zip(src: Path, dst: Path, edits: dict[str, Callable[[bytes], bytes]]) -> Path:
    """Copy a zip archive, passing the entries whose name ends with a key through its function."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            for suffix, edit in edits.items():
                if info.filename.endswith(suffix):
                    data = edit(data)
            zout.writestr(info, data)
    return dst


def assert_refused(path: Path, match: str, *, pwned: Path | None = None) -> None:
    with pytest.raises(ModelError, match=match):
        sniff_model_format(path)
    with pytest.raises(ModelError, match=match):
        load_runtime(path)
    if pwned is not None:
        assert not pwned.exists(), "the payload ran"


# --- sniffing and loading ---------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_sniff_detects_format(files: dict[str, Path], fmt: ModelFormat) -> None:
    assert sniff_model_format(files[str(fmt)]) is fmt


@pytest.mark.parametrize("fmt", FORMATS)
def test_sniff_ignores_lying_extension(files: dict[str, Path], fmt: ModelFormat, tmp_path) -> None:
    liar = tmp_path / ("model.onnx" if fmt is not ModelFormat.ONNX else "model.pt")
    shutil.copy(files[str(fmt)], liar)
    assert sniff_model_format(liar) is fmt
    assert load_runtime(liar).format is fmt


@pytest.mark.parametrize("batch", [1, 5])
@pytest.mark.parametrize("fmt", FORMATS)
def test_logits_match_eager(net, loaded, fmt: ModelFormat, batch: int) -> None:
    x = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(batch))
    out = loaded[str(fmt)](x)
    assert out.shape == (batch, 5)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, net(x).detach(), atol=1e-4, rtol=0)


@pytest.mark.parametrize("fmt", [ModelFormat.TORCHSCRIPT, ModelFormat.EXPORTED_PROGRAM])
def test_torch_formats_accept_channels_last(net, loaded, fmt: ModelFormat) -> None:
    model = loaded[str(fmt)]
    assert model.supports_channels_last
    x = torch.randn(3, 3, 32, 32).to(memory_format=torch.channels_last)
    torch.testing.assert_close(model(x), net(x).detach(), atol=1e-4, rtol=0)


def test_declared_inputs(loaded) -> None:
    onnx_decl = loaded["onnx"].declared
    assert onnx_decl == DeclaredInput("NCHW", 3, 32, 32, 5, "input")
    assert loaded["torch_export"].declared == DeclaredInput("NCHW", 3, 32, 32, 5, "x")
    ts = loaded["torchscript"].declared
    assert ts.layout in (None, "NCHW")
    assert ts.num_classes in (None, 5)


@pytest.mark.parametrize(
    ("fmt", "conv_op"),
    [
        (ModelFormat.ONNX, "Conv"),
        (ModelFormat.EXPORTED_PROGRAM, "aten.conv2d.default"),
        (ModelFormat.TORCHSCRIPT, "aten::_convolution"),
    ],
)
def test_layer_outputs(net, loaded, fmt: ModelFormat, conv_op: str) -> None:
    model = loaded[str(fmt)]
    x = torch.randn(2, 3, 32, 32)
    if model.layers_unavailable_reason is not None:  # allowed for TorchScript only
        assert fmt is ModelFormat.TORCHSCRIPT
        assert "torch.export or ONNX" in model.layers_unavailable_reason
        with pytest.raises(ModelError, match=r"torch\.export or ONNX"):
            model.forward_with_layers(x)
        return
    logits, layers = model.forward_with_layers(x)
    torch.testing.assert_close(logits, net(x).detach(), atol=1e-4, rtol=0)
    assert all(layer.value.dim() in (3, 4) for layer in layers)
    assert all(layer.value.dtype == torch.float32 for layer in layers)
    convs = [layer for layer in layers if layer.op_type == conv_op]
    assert [tuple(c.value.shape) for c in convs] == [(2, 8, 32, 32), (2, 8, 16, 16)]
    assert len({layer.name for layer in layers}) == len(layers)
    _, again = model.forward_with_layers(x)
    assert [layer.name for layer in again] == [layer.name for layer in layers]


def test_onnx_threads_and_provider(files) -> None:
    model = load_runtime(files["onnx"], threads=1)
    assert model.execution_provider == "CPUExecutionProvider"  # type: ignore[attr-defined]
    assert not model.supports_channels_last
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 5)


def test_onnx_float16_input_is_cast(tmp_path) -> None:
    graph = helper.make_graph(
        [
            helper.make_node("GlobalAveragePool", ["x"], ["pooled"]),
            helper.make_node("Cast", ["pooled"], ["logits"], to=TensorProto.FLOAT),
        ],
        "fp16",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT16, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3, 1, 1])],
    )
    path = tmp_path / "fp16.onnx"
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(proto, path)
    model = load_runtime(path)
    assert model.declared == DeclaredInput("NCHW", 3, 8, 8, 3, "x")
    x = torch.rand(2, 3, 8, 8)
    torch.testing.assert_close(model(x), x.mean((2, 3)), atol=1e-2, rtol=0)


# --- output normalisation and shape errors ------------------------------------------------------


class TupleOut(nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = x.mean((2, 3))
        return logits[:, :, None, None], x


class VectorOut(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.sum((1, 2, 3))


def test_output_tuple_and_singleton_dims_normalised(tmp_path) -> None:
    x = torch.randn(2, 3, 8, 8)
    torch.jit.trace(TupleOut(), x).save(str(tmp_path / "t.ts"))
    out = load_runtime(tmp_path / "t.ts")(x)
    torch.testing.assert_close(out, x.mean((2, 3)))


def test_output_not_2d_is_refused(tmp_path) -> None:
    x = torch.randn(2, 3, 8, 8)
    torch.jit.trace(VectorOut(), x).save(str(tmp_path / "v.ts"))
    with pytest.raises(ModelError, match=r"shape \(2,\)"):
        load_runtime(tmp_path / "v.ts")(x)


@pytest.mark.parametrize("fmt", [ModelFormat.ONNX, ModelFormat.EXPORTED_PROGRAM])
def test_wrong_input_size_names_shapes(loaded, fmt: ModelFormat) -> None:
    with pytest.raises(ModelError, match=r"\(2, 3, 16, 16\).*\(N, 3, 32, 32\) \[NCHW\]"):
        loaded[str(fmt)](torch.randn(2, 3, 16, 16))


def test_check_input_shape_messages() -> None:
    declared = DeclaredInput("NCHW", 3, 224, 224, 1000, "input")
    check_input_shape(declared, layout="NCHW", channels=3, height=224, width=224)
    with pytest.raises(ModelError) as err:
        check_input_shape(declared, layout="NCHW", channels=3, height=32, width=32)
    assert str(err.value) == (
        "model expects input (N, 3, 224, 224) [NCHW] but the config gives (N, 3, 32, 32) [NCHW]"
    )
    with pytest.raises(ModelError, match=r"\(N, 224, 224, 3\) \[NHWC\]$"):
        check_input_shape(declared, layout="NHWC", channels=3, height=224, width=224)
    dynamic = DeclaredInput("NCHW", 3, None, None, None, None)
    check_input_shape(dynamic, layout="NCHW", channels=3, height=17, width=99)
    with pytest.raises(ModelError, match=r"expects input \(N, 3, \?, \?\) \[NCHW\]"):
        check_input_shape(dynamic, layout="NCHW", channels=1, height=17, width=99)
    unknown = DeclaredInput(None, None, None, None, None, None)
    check_input_shape(unknown, layout="NHWC", channels=1, height=5, width=5)


# --- refusals -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["state_dict", "module", "legacy"])
def test_torch_save_files_refused(files, name: str) -> None:
    assert_refused(files[name], r"pickle.*torch\.onnx\.export.*torch\.jit.*torch\.export\.save")


@pytest.mark.parametrize("via", ["system", "open"])
@pytest.mark.parametrize(
    "container", ["raw", "raw-protocol-0", "torch-save-zip", "torchscript-zip"]
)
def test_malicious_pickle_never_unpickled(files, tmp_path, container: str, via: str) -> None:
    pwned = tmp_path / "pwned"
    payload = pickle.dumps(Payload(pwned, via), protocol=0 if container.endswith("0") else 2)
    path = tmp_path / "model.bin"
    if container.startswith("raw"):
        path.write_bytes(payload)
    else:
        src = files["state_dict" if container == "torch-save-zip" else "torchscript"]
        rewrite_zip(src, path, {"/data.pkl": lambda _: payload})
    assert_refused(path, "pickle|Python global|not an ONNX", pwned=pwned)


@pytest.mark.parametrize("via", ["system", "open"])
def test_torchscript_unpickler_resolves_no_python_globals(files, tmp_path, via: str) -> None:
    """The assumption behind accepting TorchScript: torch.jit.load itself refuses such pickles."""
    pwned = tmp_path / "pwned"
    payload = pickle.dumps(Payload(pwned, via), protocol=2)
    path = rewrite_zip(files["torchscript"], tmp_path / "m.ts", {"/data.pkl": lambda _: payload})
    with pytest.raises(RuntimeError, match="Unknown type name"):
        torch.jit.load(str(path))
    assert not pwned.exists()


def test_pt2_malicious_sample_inputs_never_unpickled(files, tmp_path) -> None:
    pwned = tmp_path / "pwned"
    buf = io.BytesIO()
    torch.save((Payload(pwned, "system"),), buf)
    path = rewrite_zip(
        files["torch_export"],
        tmp_path / "evil.pt2",
        {"sample_inputs/model.pt": lambda _: buf.getvalue()},
    )
    assert_refused(path, "weights_only", pwned=pwned)


def _edit_model_json(edit: Callable[[dict], None]) -> Callable[[bytes], bytes]:
    def apply(data: bytes) -> bytes:
        doc = json.loads(data)
        edit(doc)
        return json.dumps(doc).encode()

    return apply


def _set_expr(doc: dict, cmd: str) -> None:
    sizes = doc["graph_module"]["graph"]["tensor_values"]["x"]["sizes"]
    sizes[0]["as_expr"]["expr_str"] = f"__import__('os').system({cmd!r}) or s77"


def _set_guards(doc: dict, cmd: str) -> None:
    doc["guards_code"] = [f"__import__('os').system({cmd!r}) == 0"]


def _set_arg_names(doc: dict, cmd: str) -> None:
    sig = doc["graph_module"]["module_call_graph"][0]["signature"]
    sig["forward_arg_names"] = [f"x=__import__('os').system({cmd!r})"]


@pytest.mark.parametrize("edit", [_set_expr, _set_guards, _set_arg_names])
def test_pt2_code_in_json_refused(files, tmp_path, edit) -> None:
    pwned = tmp_path / "pwned"
    fix = _edit_model_json(lambda doc: edit(doc, f"touch '{pwned}'"))
    path = rewrite_zip(files["torch_export"], tmp_path / "evil.pt2", {"models/model.json": fix})
    assert_refused(path, "refusing", pwned=pwned)


def test_pt2_pickled_weights_refused(files, tmp_path) -> None:
    def pickled(data: bytes) -> bytes:
        doc = json.loads(data)
        next(iter(doc["config"].values()))["use_pickle"] = True
        return json.dumps(doc).encode()

    path = rewrite_zip(files["torch_export"], tmp_path / "w.pt2", {"weights_config.json": pickled})
    assert_refused(path, "pickle")


class SavesOnLoad(nn.Module):
    """TorchScript's __setstate__ runs inside torch.jit.load; this one writes a file."""

    def __init__(self, target: str) -> None:
        super().__init__()
        self.target = target
        self.w = torch.ones(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean((2, 3)) * self.w

    @torch.jit.export
    def __getstate__(self) -> tuple[torch.Tensor, str, bool]:
        return (self.w, self.target, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[torch.Tensor, str, bool]) -> None:
        self.w, self.target, self.training = state
        torch.save(self.w, self.target)


def test_torchscript_file_access_refused(tmp_path) -> None:
    pwned = tmp_path / "pwned"
    torch.jit.script(SavesOnLoad(str(pwned))).save(str(tmp_path / "s.ts"))
    assert not pwned.exists()
    assert_refused(tmp_path / "s.ts", "'save'", pwned=pwned)


def test_onnx_external_data_refused(files, tmp_path) -> None:
    model = onnx.load(files["onnx"])
    path = tmp_path / "ext.onnx"
    onnx.save_model(model, path, save_as_external_data=True, location="w.bin", size_threshold=0)
    assert (tmp_path / "w.bin").exists()
    assert_refused(path, "external")


@pytest.mark.parametrize(
    "content",
    [b"", np.random.default_rng(0).bytes(4096), b"just some text\nnot a model\n", b"PK\x03\x04xx"],
    ids=["empty", "random", "text", "broken-zip"],
)
def test_garbage_refused(tmp_path, content: bytes) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(content)
    assert_refused(path, "not an ONNX|zip")


def test_zip_layouts_refused(files, tmp_path) -> None:
    other = tmp_path / "other.zip"
    with zipfile.ZipFile(other, "w") as z:
        z.writestr("archive/readme.txt", "hi")
    assert_refused(other, "not an ONNX, TorchScript or torch.export model")
    dup = shutil.copy(files["torchscript"], tmp_path / "dup.ts")
    with zipfile.ZipFile(dup, "a") as z, pytest.warns(UserWarning, match="Duplicate"):
        z.writestr(next(n for n in z.namelist() if n.endswith("data.pkl")), b"\x80\x02N.")
    assert_refused(Path(dup), "duplicate")


def test_missing_file(tmp_path) -> None:
    assert_refused(tmp_path / "nope.onnx", "cannot read")


# --- GPU ----------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("fmt", FORMATS)
def test_cuda_logits_match(net, files, fmt: ModelFormat) -> None:
    model = load_runtime(files[str(fmt)], device="cuda")
    x = torch.randn(4, 3, 32, 32)
    out = model(x.cuda())
    assert out.device.type == "cuda"
    torch.testing.assert_close(out.cpu(), net(x).detach(), atol=1e-3, rtol=0)
    if model.layers_unavailable_reason is None:
        _, layers = model.forward_with_layers(x.cuda())
        assert layers
        assert all(layer.value.device.type == "cuda" for layer in layers)
