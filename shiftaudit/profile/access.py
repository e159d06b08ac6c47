"""Graph access per format: ONNX and torch.export graphs are read, TorchScript is not."""

from __future__ import annotations

import functools

from ..model_files import ModelFormat
from ..runtimes import Runtime
from ..runtimes.exported import ExportedRuntime
from ..runtimes.onnx import OnnxRuntime
from .fx_graph import FxGraph
from .onnx_graph import OnnxGraph

Graph = OnnxGraph | FxGraph

TORCHSCRIPT = (
    "not available for this format: TorchScript graphs are neither read statically nor "
    "rewritten here (the profile reads ONNX and torch.export graphs); export the model with "
    "torch.export or ONNX for it"
)


def open_graph(model: Runtime, *, threads: int | None = None) -> tuple[Graph | None, str | None]:
    """The model's graph, or why there is none; its ONNX Runtime sessions run on `threads`
    intra-op threads (None: the model's own setting)."""
    try:
        if model.format is ModelFormat.ONNX and isinstance(model, OnnxRuntime):
            session = functools.partial(model.session_for, threads=threads)
            return OnnxGraph(model.proto, session=session, device=model.device), None
        if model.format is ModelFormat.EXPORTED_PROGRAM and isinstance(model, ExportedRuntime):
            return FxGraph(model.graph_module), None
    except Exception as exc:
        return None, f"the graph could not be read: {type(exc).__name__}: {exc}"
    return None, TORCHSCRIPT
