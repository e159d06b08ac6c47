"""Recognise and vet untrusted classifier files (ONNX, TorchScript, torch.export) without
the Python unpickler.

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
  ``_check_pt2`` refuses archives using any of these, and ``runtimes.exported`` allows only
  aten/prims operators (minus the file-touching ones) before the graph is ever run.
"""

from __future__ import annotations

import io
import json
import keyword
import pickletools
import re
import zipfile
from enum import StrEnum
from pathlib import Path
from typing import IO, Any

import onnx
import torch

from shiftaudit.errors import ModelError
from shiftaudit.input_contract import declared_input

__all__ = ["ModelFormat", "declared_input_size", "inspect_model", "onnx_dims", "sniff_model_format"]


class ModelFormat(StrEnum):
    """Model file formats accepted for auditing."""

    ONNX = "onnx"
    TORCHSCRIPT = "torchscript"
    EXPORTED_PROGRAM = "torch_export"


_EXPORT_HINT = (
    "Export the model instead: torch.onnx.export(model, (x,), 'model.onnx'), "
    "torch.jit.trace(model, x).save('model.ts'), or "
    "torch.export.save(torch.export.export(model, (x,)), 'model.pt2')."
)
_UNKNOWN = "not an ONNX, TorchScript or torch.export model"
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


def inspect_model(f: IO[bytes], label: str) -> tuple[ModelFormat, onnx.ModelProto | None]:
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


def onnx_dims(value_info: Any) -> list[int | None] | None:
    """A value's static dimensions (None where symbolic), or None without a shape."""
    tensor_type = value_info.type.tensor_type
    if not tensor_type.HasField("shape"):
        return None
    return [
        d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
        for d in tensor_type.shape.dim
    ]


def _pt2_dims(zf: zipfile.ZipFile) -> list[int | None] | None:
    """The user input's static dimensions from a torch.export archive's graph JSON."""
    for name in zf.namelist():
        if "/models/" in name and name.endswith(".json"):
            module = json.loads(zf.read(name)).get("graph_module", {})
            specs = module.get("signature", {}).get("input_specs", [])
            user = [s["user_input"]["arg"] for s in specs if "user_input" in s]
            if len(user) != 1 or "as_tensor" not in user[0]:
                return None
            tensor = module["graph"]["tensor_values"][user[0]["as_tensor"]["name"]]
            return [size.get("as_int") for size in tensor["sizes"]]
    return None


def declared_input_size(path: str | Path) -> tuple[int, int] | None:
    """(H, W) as a vetted model file declares it, read without loading it; None when it
    declares none (TorchScript never does) or the layout is ambiguous."""
    p = Path(path)
    with p.open("rb") as f:
        fmt, proto = inspect_model(f, p.name)
        if proto is not None:
            initialisers = {t.name for t in proto.graph.initializer}
            inputs = [v for v in proto.graph.input if v.name not in initialisers]
            dims = onnx_dims(inputs[0]) if len(inputs) == 1 else None
        elif fmt is ModelFormat.EXPORTED_PROGRAM:
            f.seek(0)
            try:
                with zipfile.ZipFile(f) as zf:
                    dims = _pt2_dims(zf)
            except _MALFORMED:
                dims = None
        else:
            dims = None
    declared = declared_input(dims, None, None)
    if declared.height is None or declared.width is None:
        return None
    return declared.height, declared.width


def sniff_model_format(path: str | Path) -> ModelFormat:
    """Detect the model format from the file's content and refuse unsafe files (ModelError)."""
    p = Path(path)
    try:
        with p.open("rb") as f:
            return inspect_model(f, p.name)[0]
    except OSError as exc:
        raise ModelError(f"cannot read model file {p}: {exc}") from exc
