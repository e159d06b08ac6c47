"""Ways to run a classifier file: one runtime class per format, chosen from the content."""

from __future__ import annotations

import io
from pathlib import Path

import torch

from shiftaudit.errors import ModelError
from shiftaudit.model_files import ModelFormat, inspect_model
from shiftaudit.runtimes.base import LayerOutput, Runtime, is_out_of_memory
from shiftaudit.runtimes.exported import ExportedRuntime
from shiftaudit.runtimes.onnx import OnnxRuntime
from shiftaudit.runtimes.torchscript import TorchScriptRuntime

__all__ = ["LayerOutput", "Runtime", "is_out_of_memory", "load_runtime"]


def load_runtime(
    path: str | Path, *, device: torch.device | str = "cpu", threads: int | None = None
) -> Runtime:
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
    fmt, proto = inspect_model(io.BytesIO(data), p.name)
    if proto is not None:
        return OnnxRuntime(proto, data, dev, threads, p.name)
    if fmt is ModelFormat.EXPORTED_PROGRAM:
        return ExportedRuntime(data, dev, p.name)
    try:
        return TorchScriptRuntime(data, dev)
    except Exception as exc:
        raise ModelError(f"{p.name}: torch.jit.load failed: {exc}") from exc
