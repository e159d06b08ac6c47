"""torch.export programs, loaded only after the archive checks in model_files and the graph
check here."""

from __future__ import annotations

import io
import math
import operator
from typing import Any

import torch
import torch.utils._pytree as pytree

from shiftaudit.errors import ModelError
from shiftaudit.input_contract import declared_input
from shiftaudit.model_files import ModelFormat
from shiftaudit.runtimes.base import LayerOutput, Runtime

# Python callables an exported graph may contain besides aten/prims ops (symbolic-shape arithmetic).
_SAFE_PY_TARGETS: set[Any] = (
    {operator.getitem, operator.add, operator.sub, operator.mul, operator.floordiv}
    | {operator.truediv, operator.mod, operator.pow, operator.neg, operator.eq, operator.ne}
    | {operator.lt, operator.le, operator.gt, operator.ge, math.ceil, math.floor, math.trunc}
    | {torch.sym_max, torch.sym_min, torch.sym_not, torch.sym_float, torch.sym_int, torch.sym_ite}
)


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


class ExportedRuntime(Runtime):
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
        self.declared = declared_input(
            self._dims(nodes.get(sig.user_inputs[0])),
            self._dims(nodes.get(str(sig.user_outputs[0]))),
            sig.user_inputs[0],
        )
        self.program = ep  # on the CPU, as loaded: what runtimes.conversion exports
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

    # --- Graph access for the layer profile (shiftaudit/profile) -------------------------

    @property
    def graph_module(self) -> torch.fx.GraphModule:
        """The module this runtime runs: the layer profile reads its graph and compiles its runs."""
        return self._gm
