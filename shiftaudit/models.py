"""Load untrusted classifier files (ONNX, TorchScript, torch.export) without the Python unpickler.

Every format is recognised from its content. Before a file reaches a torch loader, the parts that
loader would execute or unpickle are checked here, because uploads are untrusted:

* plain pickles (``torch.save`` of a module or ``state_dict``) are refused outright;
* TorchScript: ``torch.jit.load`` uses a C++ unpickler that resolves no Python globals, but the
  archive's TorchScript code runs during loading (``__setstate__``) and may call ``torch.save`` /
  ``torch.from_file``; so the pickles' globals and the code's identifiers are checked first;
* torch.export (torch 2.13): ``torch.export.load`` is unsafe on untrusted input. It unpickles the
  sample inputs with ``weights_only=True`` but falls back to ``weights_only=False`` when that fails,
  loads pickled weights/constants with ``weights_only=False`` and opaque objects with
  ``pickle.loads``, passes every ``expr_str`` to ``sympy.sympify`` (an ``eval``), and
  ``ep.module()`` execs ``guards_code`` and splices ``forward_arg_names`` into generated code.
  ``_check_pt2`` refuses archives using any of these, and ``_check_exported_graph`` allows only
  aten/prims operators (minus the file-touching ones) before the graph is ever run.
"""

from __future__ import annotations

import io
import json
import keyword
import math
import operator
import pickletools
import re
import warnings
import zipfile
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import IO, Any, Literal

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.utils._pytree as pytree

from shiftaudit.errors import ModelError

__all__ = [
    "DeclaredInput",
    "LayerOutput",
    "LoadedModel",
    "ModelFormat",
    "check_input_shape",
    "load_model",
    "sniff_model_format",
]


_OUT_OF_MEMORY = re.compile(
    r"out of memory|can't allocate|cannot allocate|failed to allocate|bad_alloc", re.IGNORECASE
)


def is_out_of_memory(error: BaseException) -> bool:
    """Whether an error means memory ran out (rather than that the input was wrong)."""
    return isinstance(error, MemoryError | torch.OutOfMemoryError) or bool(
        _OUT_OF_MEMORY.search(str(error))
    )


class ModelFormat(StrEnum):
    """Model file formats accepted for auditing."""

    ONNX = "onnx"
    TORCHSCRIPT = "torchscript"
    EXPORTED_PROGRAM = "torch_export"


@dataclass(frozen=True)
class DeclaredInput:
    """What the model itself declares about its input and output; ``None`` where it does not."""

    layout: Literal["NCHW", "NHWC"] | None
    channels: int | None
    height: int | None
    width: int | None
    num_classes: int | None
    input_name: str | None


@dataclass
class LayerOutput:
    """One intermediate activation recorded by ``forward_with_layers``."""

    name: str
    op_type: str
    value: torch.Tensor


_EXPORT_HINT = (
    "Export the model instead: torch.onnx.export(model, (x,), 'model.onnx'), "
    "torch.jit.trace(model, x).save('model.ts'), or "
    "torch.export.save(torch.export.export(model, (x,)), 'model.pt2')."
)
_UNKNOWN = "not an ONNX, TorchScript or torch.export model"
_TS_LAYERS_HINT = "export the model with torch.export or ONNX to get the per-layer profile"
# Globals a TorchScript archive's pickles legitimately name (resolved by the C++ unpickler).
_TS_PICKLE_MODULES = re.compile(
    r"(__torch__(\..*)?|torch|torch\._utils|torch\.jit\._pickle|collections)"
)
# TorchScript builtins that touch the file system: aten::save and aten::from_file.
_TS_FORBIDDEN_CALLS = re.compile(r"\b(save|from_file)\b")
_PT2_ENTRY = re.compile(
    r"(archive_format|archive_version|byteorder|\.data/version|\.data/serialization_id"
    r"|models/\w+\.json|data/sample_inputs/\w+\.pt|data/weights/(weight_\d+|\w+_weights_config\.json)"
    r"|data/constants/(tensor_\d+|\w+_constants_config\.json)|extra/[\w.-]+)"
)
# sympify() evals expr_str: allow only numbers, operators, 'name' literals and these names.
_SYMPY_NAME = re.compile(
    r"[a-z]+\d+|Symbol|Integer|Rational|Float|Add|Mul|Pow|Max|Min|Abs|Eq|Ne|Lt|Le|Gt|Ge|And|Or|Not"
    r"|oo|True|False|None|positive|integer|nonnegative|real|finite|FloorDiv|ModularIndexing|Where"
    r"|PythonMod|Mod|CleanDiv|CeilToInt|FloorToInt|CeilDiv|LShift|RShift|PowByNatural|FloatPow"
    r"|FloatTrueDiv|IntTrueDiv|IsNonOverlappingAndDenseIndicator|TruncToFloat|TruncToInt"
    r"|RoundToInt|RoundDecimal|ToFloat|Identity"
)
_SYMPY_TOKEN = re.compile(r"\s*(?:\d+(?:\.\d+)?|'[A-Za-z_]\w*'|([A-Za-z_]\w*)|\*\*|[-+*/%(),=<>])")
# Python callables an exported graph may contain besides aten/prims ops (symbolic-shape arithmetic).
_SAFE_PY_TARGETS: set[Any] = (
    {operator.getitem, operator.add, operator.sub, operator.mul, operator.floordiv}
    | {operator.truediv, operator.mod, operator.pow, operator.neg, operator.eq, operator.ne}
    | {operator.lt, operator.le, operator.gt, operator.ge, math.ceil, math.floor, math.trunc}
    | {torch.sym_max, torch.sym_min, torch.sym_not, torch.sym_float, torch.sym_int, torch.sym_ite}
)


_MALFORMED: tuple[type[Exception], ...] = (zipfile.BadZipFile, OSError, LookupError, ValueError)
_MALFORMED += (TypeError, AttributeError, NotImplementedError, EOFError, RecursionError)


def _refuse_pickle(label: str) -> ModelError:
    return ModelError(
        f"{label}: refusing a Python pickle (torch.save of a module or state_dict); unpickling an "
        f"uploaded file can run arbitrary code. {_EXPORT_HINT}"
    )


def _zip_root(names: list[str], label: str) -> str:
    """Return the single top-level folder; torch's zip reader reads everything below the first."""
    if len(set(names)) != len(names):
        raise ModelError(f"{label}: zip archive has duplicate entry names; refusing it")
    roots = {n.split("/", 1)[0] for n in names}
    if len(roots) != 1 or any("/" not in n for n in names):
        raise ModelError(f"{label}: {_UNKNOWN} (zip without a single top-level folder)")
    return roots.pop()


def _pickle_globals(data: bytes, label: str) -> set[str]:
    """List the globals a pickle would import, without unpickling it (pickletools only parses)."""
    found: set[str] = set()
    strings: list[str] = []
    try:
        for op, arg, _ in pickletools.genops(data):
            if op.name in ("GLOBAL", "INST"):
                found.add(str(arg).replace(" ", "."))
            elif op.name.startswith("EXT"):  # copyreg extension registry: refuse outright
                found.add(f"<extension code {arg}>")
            elif op.name == "STACK_GLOBAL":
                found.add(".".join(strings[-2:]) if len(strings) >= 2 else "?")
            elif isinstance(arg, str):
                strings.append(arg)
    except Exception as exc:
        raise ModelError(f"{label}: malformed pickle in the archive ({exc})") from exc
    return found


def _check_torchscript(zf: zipfile.ZipFile, root: str, label: str) -> None:
    """Refuse TorchScript archives whose pickles or code reach outside TorchScript."""
    for name in zf.namelist():
        rel = name[len(root) + 1 :]
        if rel.endswith((".pkl", ".debug_pkl")):
            for glob in _pickle_globals(zf.read(name), label):
                if not _TS_PICKLE_MODULES.fullmatch(glob.rpartition(".")[0]):
                    raise ModelError(f"{label}: {rel} references the Python global {glob!r}")
        elif rel.startswith("code/") and rel.endswith(".py"):
            text = zf.read(name).decode("utf-8", errors="replace")
            if match := _TS_FORBIDDEN_CALLS.search(text):
                raise ModelError(
                    f"{label}: TorchScript code in {rel} calls {match.group(1)!r}, which touches "
                    "the file system; refusing it"
                )


def _check_expr(expr: str, label: str) -> None:
    pos, end = 0, len(expr.rstrip())
    while pos < end:
        tok = _SYMPY_TOKEN.match(expr, pos)
        if tok is None or (tok.group(1) and not _SYMPY_NAME.fullmatch(tok.group(1))):
            raise ModelError(f"{label}: refusing the symbolic shape expression {expr[:80]!r}")
        pos = tok.end()


def _check_pt2_json(obj: Any, label: str) -> None:
    """Walk the model JSON and refuse fields that torch would eval or exec."""
    if isinstance(obj, list):
        for item in obj:
            _check_pt2_json(item, label)
    elif isinstance(obj, dict):
        for key, value in obj.items():
            if key == "expr_str":
                _check_expr(str(value), label)
            elif key == "guards_code" and value:
                raise ModelError(f"{label}: refusing an archive with guards_code (it is exec'd)")
            elif key == "forward_arg_names" and value:
                for arg in value:
                    if not (
                        isinstance(arg, str) and arg.isidentifier() and not keyword.iskeyword(arg)
                    ):
                        raise ModelError(f"{label}: refusing the argument name {arg!r}")
            _check_pt2_json(value, label)


def _check_pt2(zf: zipfile.ZipFile, root: str, label: str) -> None:
    """Refuse archive layouts and fields that make ``torch.export.load`` unsafe (module doc)."""
    for name in zf.namelist():
        rel = name[len(root) + 1 :]
        if not _PT2_ENTRY.fullmatch(rel):
            raise ModelError(f"{label}: unexpected entry {rel!r} in a torch.export archive")
        if rel.endswith("_config.json"):
            for fqn, meta in json.loads(zf.read(name)).get("config", {}).items():
                if meta.get("use_pickle") or not str(meta.get("path_name")).startswith(
                    ("weight_", "tensor_")
                ):
                    raise ModelError(f"{label}: {fqn!r} is stored as a pickle or custom object")
        elif rel.startswith("models/"):
            _check_pt2_json(json.loads(zf.read(name)), label)
        elif rel.startswith("data/sample_inputs/") and (blob := zf.read(name)):
            # torch retries a failing weights_only load with the full unpickler: ensure it can't.
            try:
                torch.load(io.BytesIO(blob), weights_only=True)
            except Exception as exc:
                raise ModelError(
                    f"{label}: {rel} holds more than plain tensors (a weights_only load refused "
                    "it); torch.export.load would retry with the full unpickler"
                ) from exc


def _onnx_tensors(graph: Any) -> Any:
    """Yield every TensorProto of a graph, including those in attributes and subgraphs."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield from (sparse.values, sparse.indices)
    for node in graph.node:
        yield from _onnx_attr_tensors(node)


def _onnx_attr_tensors(node: Any) -> Any:
    for attr in node.attribute:
        yield from [attr.t, *attr.tensors]
        for sparse in [attr.sparse_tensor, *attr.sparse_tensors]:
            yield from (sparse.values, sparse.indices)
        for sub in [attr.g, *attr.graphs]:
            yield from _onnx_tensors(sub)


def _parse_onnx(data: bytes, label: str) -> onnx.ModelProto:
    """Parse a ModelProto without touching external data, and refuse external-data references."""
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except Exception as exc:
        raise ModelError(f"{label}: {_UNKNOWN}") from exc
    if model.ir_version <= 0 or not model.opset_import or not model.graph.node:
        raise ModelError(f"{label}: {_UNKNOWN}")
    tensors = [*_onnx_tensors(model.graph)]
    tensors += [t for f in model.functions for n in f.node for t in _onnx_attr_tensors(n)]
    if any(t.data_location == onnx.TensorProto.EXTERNAL or t.external_data for t in tensors):
        raise ModelError(
            f"{label}: the ONNX model keeps tensors in external files, whose paths could point "
            "anywhere; refusing it. Save it as one file: onnx.save_model(model, path, "
            "save_as_external_data=False)."
        )
    return model


def _inspect(f: IO[bytes], label: str) -> tuple[ModelFormat, onnx.ModelProto | None]:
    """Recognise the format from content and run the format's safety checks."""
    head = f.read(4)
    f.seek(0)
    if not head:
        raise ModelError(f"{label}: empty file; {_UNKNOWN}")
    if head[0] == 0x80:  # PROTO opcode: raw pickle or legacy torch.save
        raise _refuse_pickle(label)
    if head != b"PK\x03\x04":
        return ModelFormat.ONNX, _parse_onnx(f.read(), label)
    try:
        zf = zipfile.ZipFile(f)
        names = zf.namelist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise ModelError(f"{label}: unreadable zip archive ({exc})") from exc
    with zf:
        root = _zip_root(names, label)
        rels = {n[len(root) + 1 :] for n in names}
        try:
            if "archive_format" in rels and zf.read(f"{root}/archive_format").strip() == b"pt2":
                _check_pt2(zf, root, label)
                return ModelFormat.EXPORTED_PROGRAM, None
            if "data.pkl" in rels and any(r.startswith("code/") for r in rels):
                _check_torchscript(zf, root, label)
                return ModelFormat.TORCHSCRIPT, None
        except _MALFORMED as exc:  # bad JSON, CRC errors, unexpected JSON shapes
            raise ModelError(f"{label}: malformed model archive ({exc!r})") from exc
    if "data.pkl" in rels:
        raise _refuse_pickle(label)
    raise ModelError(f"{label}: {_UNKNOWN} (zip archive of an unknown layout)")


def sniff_model_format(path: str | Path) -> ModelFormat:
    """Detect the model format from the file's content and refuse unsafe files (ModelError)."""
    p = Path(path)
    try:
        with p.open("rb") as f:
            return _inspect(f, p.name)[0]
    except OSError as exc:
        raise ModelError(f"cannot read model file {p}: {exc}") from exc


def _shape_str(layout: str, c: int | None, h: int | None, w: int | None) -> str:
    dims = ["N", c, h, w] if layout == "NCHW" else ["N", h, w, c]
    return "(" + ", ".join("?" if d is None else str(d) for d in dims) + f") [{layout}]"


def _declared(
    dims: list[int | None] | None, out: list[int | None] | None, name: str | None
) -> DeclaredInput:
    """Infer the layout from a rank-4 shape whose channel dim is 1 or 3 and the other is not."""
    layout: Literal["NCHW", "NHWC"] | None = None
    c = h = w = None
    if dims is not None and len(dims) == 4:
        first, last = dims[1] in (1, 3), dims[3] in (1, 3)
        if first and not last:
            layout, c, h, w = "NCHW", dims[1], dims[2], dims[3]
        elif last and not first:
            layout, c, h, w = "NHWC", dims[3], dims[1], dims[2]
    while out is not None and len(out) > 2 and out[-1] == 1:  # as __call__ squeezes the logits
        out = out[:-1]
    return DeclaredInput(layout, c, h, w, out[-1] if out else None, name)


def check_input_shape(
    declared: DeclaredInput, *, layout: str, channels: int, height: int, width: int
) -> None:
    """Raise ModelError when a static dimension the model declares contradicts the config."""
    if layout not in ("NCHW", "NHWC"):
        raise ModelError(f"input layout must be 'NCHW' or 'NHWC', not {layout!r}")
    pairs = [(declared.channels, channels), (declared.height, height), (declared.width, width)]
    mismatch = declared.layout not in (None, layout) or any(d not in (None, g) for d, g in pairs)
    if mismatch:
        d = declared
        raise ModelError(
            f"model expects input {_shape_str(d.layout or layout, d.channels, d.height, d.width)} "
            f"but the config gives {_shape_str(layout, channels, height, width)}"
        )


def _first_tensor(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out:
        return _first_tensor(out[0])
    if isinstance(out, dict) and out:
        return _first_tensor(next(iter(out.values())))
    raise ModelError(f"model returned {type(out).__name__}; expected a tensor of logits")


def _logits(out: Any) -> torch.Tensor:
    """First tensor of the output, trailing singleton dims squeezed, as (B, classes) float32."""
    t = _first_tensor(out)
    while t.dim() > 2 and t.shape[-1] == 1:
        t = t.squeeze(-1)
    if t.dim() != 2:
        raise ModelError(
            f"model output has shape {tuple(t.shape)}; expected (batch, num_classes) logits"
        )
    return t.float()


class LoadedModel:
    """A classifier ready to run; ``load_model`` returns one of its format-specific subclasses."""

    format: ModelFormat
    declared: DeclaredInput
    device: torch.device
    layers_unavailable_reason: str | None = None
    supports_channels_last: bool = True

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, num_classes) float32 on ``self.device`` for a batch in the model's layout."""
        return _logits(self._guarded(self._forward, x))

    def forward_with_layers(self, x: torch.Tensor) -> tuple[torch.Tensor, list[LayerOutput]]:
        """Logits plus every rank-3/4 intermediate tensor, in graph order."""
        if self.layers_unavailable_reason is not None:
            raise ModelError(self.layers_unavailable_reason)
        out, layers = self._guarded(self._forward_layers, x)
        return _logits(out), layers

    def _guarded(self, fn: Any, x: torch.Tensor) -> Any:
        """Run ``fn`` and turn runtime failures into a ModelError naming both shapes.

        Running out of memory is not a shape error: it propagates as it is.
        """
        try:
            return fn(x.detach().to(self.device, torch.float32))
        except ModelError:
            raise
        except Exception as exc:
            if is_out_of_memory(exc):
                raise
            d = self.declared
            raise ModelError(
                f"{self.format} model failed on input of shape {tuple(x.shape)}; it expects "
                f"{_shape_str(d.layout, d.channels, d.height, d.width) if d.layout else '?'}: "
                f"{str(exc).strip()[:500]}"
            ) from exc

    def _forward(self, x: torch.Tensor) -> Any:
        raise NotImplementedError

    def _forward_layers(self, x: torch.Tensor) -> tuple[Any, list[LayerOutput]]:
        raise NotImplementedError


_ORT_DTYPES = {
    "tensor(float)": torch.float32,
    "tensor(float16)": torch.float16,
    "tensor(double)": torch.float64,
}
_NP_DTYPES = {torch.float32: np.float32, torch.float16: np.float16, torch.float64: np.float64}


def _onnx_dims(value_info: Any) -> list[int | None] | None:
    tensor_type = value_info.type.tensor_type
    if not tensor_type.HasField("shape"):
        return None
    return [
        d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
        for d in tensor_type.shape.dim
    ]


class _OnnxModel(LoadedModel):
    """ONNX Runtime session; the per-layer session is built on first use."""

    supports_channels_last = False

    def __init__(
        self,
        proto: onnx.ModelProto,
        data: bytes,
        device: torch.device,
        threads: int | None,
        label: str,
    ) -> None:
        self.format, self.device, self._proto, self._label = ModelFormat.ONNX, device, proto, label
        self._options = ort.SessionOptions()
        self._options.log_severity_level = 3
        if threads is not None:
            self._options.intra_op_num_threads = threads
        self._providers: list[Any] = ["CPUExecutionProvider"]
        self._cuda_id = 0
        if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            self._cuda_id = (
                device.index if device.index is not None else torch.cuda.current_device()
            )
            self._providers.insert(0, ("CUDAExecutionProvider", {"device_id": self._cuda_id}))
        self._session = self._new_session(data)
        # CPU when the CUDA provider is missing: inputs are then copied to the host and back.
        self.execution_provider: str = self._session.get_providers()[0]
        inputs = self._session.get_inputs()
        if len(inputs) != 1:
            raise ModelError(
                f"{label}: the model has {len(inputs)} inputs; expected one image input"
            )
        self._input_name: str = inputs[0].name
        if inputs[0].type not in _ORT_DTYPES:
            raise ModelError(f"{label}: unsupported input type {inputs[0].type}; expected float")
        self._dtype = _ORT_DTYPES[inputs[0].type]
        self._output_name: str = self._session.get_outputs()[0].name
        by_name = {v.name: v for v in proto.graph.input}
        outputs = proto.graph.output
        self.declared = _declared(
            _onnx_dims(by_name[self._input_name]) if self._input_name in by_name else None,
            _onnx_dims(outputs[0]) if outputs else None,
            self._input_name,
        )
        self._layer_session: Any = None
        self._layer_ops: dict[str, str] = {}

    def _new_session(self, model: bytes) -> Any:
        try:
            return ort.InferenceSession(model, self._options, providers=self._providers)
        except Exception as exc:
            raise ModelError(f"{self._label}: ONNX Runtime cannot load the model: {exc}") from exc

    def _host_input(self, x: torch.Tensor) -> np.ndarray[Any, Any]:
        return x.to(self._dtype).contiguous().cpu().numpy()  # zero-copy for float32 on CPU

    def _forward(self, x: torch.Tensor) -> Any:
        if self.execution_provider == "CUDAExecutionProvider":
            xc = x.to(self._dtype).contiguous()
            binding = self._session.io_binding()
            binding.bind_input(
                self._input_name,
                "cuda",
                self._cuda_id,
                _NP_DTYPES[self._dtype],
                tuple(xc.shape),
                xc.data_ptr(),
            )
            binding.bind_output(self._output_name, "cuda", self._cuda_id)
            self._session.run_with_iobinding(binding)
            out = binding.copy_outputs_to_cpu()[0]
        else:
            out = self._session.run([self._output_name], {self._input_name: self._host_input(x)})[0]
        return torch.from_numpy(np.asarray(out)).to(self.device)

    def _build_layer_session(self) -> None:
        """Copy the model; expose every rank-3/4 node output (per shape inference) as an output."""
        model = onnx.shape_inference.infer_shapes(self._proto)
        infos = {v.name: v for v in model.graph.value_info}
        taken = {o.name for o in model.graph.output}
        for node in model.graph.node:
            for name in node.output:
                dims = _onnx_dims(infos[name]) if name in infos else None
                if name not in taken and dims is not None and len(dims) in (3, 4):
                    model.graph.output.append(infos[name])
                    self._layer_ops[name] = node.op_type
                    taken.add(name)
        self._layer_session = self._new_session(model.SerializeToString())

    def _forward_layers(self, x: torch.Tensor) -> tuple[Any, list[LayerOutput]]:
        if self._layer_session is None:
            try:
                self._build_layer_session()
            except Exception as exc:
                self.layers_unavailable_reason = (
                    f"{self._label}: per-layer outputs unavailable: {exc}"
                )
                raise ModelError(self.layers_unavailable_reason) from exc
        names = [o.name for o in self._layer_session.get_outputs()]
        outs = self._layer_session.run(None, {self._input_name: self._host_input(x)})
        layers = [
            LayerOutput(
                n,
                self._layer_ops[n],
                torch.from_numpy(np.asarray(v)).to(self.device, torch.float32),
            )
            for n, v in zip(names, outs, strict=True)
            if n in self._layer_ops
        ]
        return torch.from_numpy(np.asarray(outs[0])).to(self.device), layers


class _TorchScriptModel(LoadedModel):
    """``torch.jit.load`` module; layers via a copy of the forward graph returning every tensor."""

    def __init__(self, data: bytes, device: torch.device) -> None:
        self.format, self.device = ModelFormat.TORCHSCRIPT, device
        with warnings.catch_warnings():  # torch.jit.load warns that TorchScript is deprecated
            warnings.simplefilter("ignore", DeprecationWarning)
            module = torch.jit.load(io.BytesIO(data), map_location=device)  # type: ignore[no-untyped-call]
        self._module = module.eval()
        args = self._module.forward.schema.arguments
        self.declared = DeclaredInput(
            None, None, None, None, None, args[1].name if len(args) > 1 else None
        )
        self._taps: list[tuple[str, str]] = []
        try:
            self._layers_fn = self._instrument()
        except Exception as exc:
            self.layers_unavailable_reason = (
                f"TorchScript graph could not be instrumented ({exc}); {_TS_LAYERS_HINT}"
            )

    def _instrument(self) -> Any:
        """Return a function of (module, x) whose result is (output, *every top-level tensor)."""
        graph = self._module.forward.graph.copy()
        torch._C._jit_pass_inline(graph)
        taps = [
            (value, node.kind())
            for node in graph.nodes()
            if not node.kind().startswith("prim::")  # weights (GetAttr), constants, tuples
            for value in node.outputs()
            if isinstance(value.type(), torch._C.TensorType)
        ]
        ret = graph.return_node()
        values = [ret.inputsAt(0), *(v for v, _ in taps)]
        pack = graph.create("prim::TupleConstruct", values)
        pack.output().setType(torch._C.TupleType([v.type() for v in values]))
        pack.insertBefore(ret)
        ret.removeAllInputs()
        ret.addInput(pack.output())
        graph.lint()
        self._taps = [(v.debugName(), kind) for v, kind in taps]
        return torch._C._create_function_from_graph("shiftaudit_layers", graph)

    def _forward(self, x: torch.Tensor) -> Any:
        with torch.inference_mode():
            return self._module(x)

    def _forward_layers(self, x: torch.Tensor) -> tuple[Any, list[LayerOutput]]:
        with torch.inference_mode():
            out, *values = self._layers_fn(self._module._c, x)
        layers = [
            LayerOutput(name, kind, v.float())
            for (name, kind), v in zip(self._taps, values, strict=True)
            if v.dim() in (3, 4)
        ]
        return out, layers


def _check_exported_graph(ep: torch.export.ExportedProgram, label: str) -> None:
    """Refuse graphs that take anything but one tensor or call anything but plain tensor ops."""
    if ep.call_spec.in_spec != pytree.tree_structure(((0,), {})):
        raise ModelError(f"{label}: the exported model must take exactly one positional tensor")
    for node in ep.graph.nodes:
        target = node.target
        if node.op in ("placeholder", "output"):
            continue
        if node.op == "call_function" and any(target is t for t in _SAFE_PY_TARGETS):
            continue
        if (
            node.op == "call_function"
            and isinstance(target, torch._ops.OpOverload)
            and target.namespace in ("aten", "prims")
            and all(a.name != "filename" for a in target._schema.arguments)  # save, from_file
        ):
            continue
        raise ModelError(f"{label}: unsupported {node.op} {target!r} in the exported graph")


class _LayerRecorder(torch.fx.Interpreter):
    """Interpreter that keeps every rank-3/4 tensor produced by a call_function node."""

    def __init__(self, module: torch.fx.GraphModule) -> None:
        super().__init__(module)
        self.layers: list[LayerOutput] = []

    def run_node(self, n: torch.fx.Node) -> Any:
        result = super().run_node(n)
        if n.op == "call_function" and isinstance(result, torch.Tensor) and result.dim() in (3, 4):
            self.layers.append(LayerOutput(n.name, str(n.target), result.detach().float()))
        return result


class _ExportedModel(LoadedModel):
    """``torch.export`` program, loaded only after ``_check_pt2`` and ``_check_exported_graph``."""

    def __init__(self, data: bytes, device: torch.device, label: str) -> None:
        self.format, self.device = ModelFormat.EXPORTED_PROGRAM, device
        try:
            ep = torch.export.load(io.BytesIO(data))
        except Exception as exc:
            raise ModelError(f"{label}: torch.export.load failed: {exc}") from exc
        _check_exported_graph(ep, label)
        sig = ep.graph_signature
        nodes = {n.name: n for n in ep.graph.nodes}
        self.declared = _declared(
            self._dims(nodes.get(sig.user_inputs[0])),
            self._dims(nodes.get(str(sig.user_outputs[0]))),
            sig.user_inputs[0],
        )
        self._gm = ep.module().to(device)

    @staticmethod
    def _dims(node: torch.fx.Node | None) -> list[int | None] | None:
        val = None if node is None else node.meta.get("val")
        if not isinstance(val, torch.Tensor):
            return None
        return [d if isinstance(d, int) else None for d in val.shape]

    def _forward(self, x: torch.Tensor) -> Any:
        with torch.no_grad():
            return self._gm(x)

    def _forward_layers(self, x: torch.Tensor) -> tuple[Any, list[LayerOutput]]:
        recorder = _LayerRecorder(self._gm)
        with torch.no_grad():
            out = recorder.run(x)
        return out, recorder.layers


def load_model(
    path: str | Path, *, device: torch.device | str = "cpu", threads: int | None = None
) -> LoadedModel:
    """Check and load a model file; ``threads`` sets ONNX Runtime's intra-op thread count."""
    p, dev = Path(path), torch.device(device)
    if dev.type not in ("cpu", "cuda"):
        raise ModelError(f"unsupported device {dev}; use 'cpu' or 'cuda'")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"device {dev} was requested but torch has no CUDA device")
    try:
        data = p.read_bytes()  # read once: the checks and the loader see the same bytes
    except OSError as exc:
        raise ModelError(f"cannot read model file {p}: {exc}") from exc
    fmt, proto = _inspect(io.BytesIO(data), p.name)
    if proto is not None:
        return _OnnxModel(proto, data, dev, threads, p.name)
    if fmt is ModelFormat.EXPORTED_PROGRAM:
        return _ExportedModel(data, dev, p.name)
    try:
        return _TorchScriptModel(data, dev)
    except Exception as exc:
        raise ModelError(f"{p.name}: torch.jit.load failed: {exc}") from exc
