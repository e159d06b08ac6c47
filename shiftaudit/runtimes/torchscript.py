"""TorchScript archives, loaded with torch.jit.load after the checks in model_files."""

from __future__ import annotations

import io
import warnings
from typing import Any

import torch

from shiftaudit.input_contract import DeclaredInput
from shiftaudit.model_files import ModelFormat
from shiftaudit.runtimes.base import LayerOutput, Runtime

_TS_LAYERS_HINT = "export the model with torch.export or ONNX to get the per-layer profile"


class TorchScriptRuntime(Runtime):
    """``torch.jit.load`` module; layers via a copy of the forward graph returning every tensor."""

    def __init__(self, data: bytes, device: torch.device) -> None:
        self.format, self.device = ModelFormat.TORCHSCRIPT, device
        with warnings.catch_warnings():  # torch.jit.load warns that TorchScript is deprecated
            warnings.simplefilter("ignore", DeprecationWarning)
            module = torch.jit.load(io.BytesIO(data), map_location=device)  # type: ignore[no-untyped-call]
        self._module = module.eval()
        # runtimes.conversion exports a fresh copy: exporting runs a module with autograd on,
        # and the JIT then keeps differentiable graphs that fail under inference mode.
        self.archive = data
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
