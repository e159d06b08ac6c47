"""An ONNX graph exported from a loaded torch model, for ONNX Runtime to run.

ONNX Runtime is often several times faster than eager PyTorch on a CPU (fused kernels, no
Python between operators), so the engine offers the same model in it (runtime_choice.py).
The export runs where the model was loaded, inside the sandbox: it translates the graph the
loaders already vetted and never unpickles. A `torch.export` program goes through the dynamo
exporter (which needs the onnxscript package); TorchScript through the TorchScript exporter,
the one that accepts a ScriptModule.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator

import onnx
import torch

from shiftaudit.errors import ModelError
from shiftaudit.runtimes.base import Runtime
from shiftaudit.runtimes.exported import ExportedRuntime
from shiftaudit.runtimes.onnx import OnnxRuntime
from shiftaudit.runtimes.torchscript import TorchScriptRuntime
from shiftaudit.tuning import example_input

EXPORTED_BACKEND = "onnxruntime-exported"
_INPUT, _OUTPUT = "input", "logits"


def exportable(model: Runtime) -> str | None:
    """None when `model` can be exported to ONNX here, else why not."""
    if not isinstance(model, ExportedRuntime | TorchScriptRuntime):
        return "only torch models (torch.export, TorchScript) are exported to ONNX"
    if isinstance(model, ExportedRuntime):
        try:
            import onnxscript  # noqa: F401  (the dynamo exporter imports it)
        except ImportError:
            return "onnxscript, which torch.onnx needs for torch.export programs, is not installed"
    return None


def onnx_bytes(model: Runtime, *, size: tuple[int, int], layout: str) -> bytes:
    """The model's graph as a serialised ONNX model with a dynamic batch dimension."""
    reason = exportable(model)
    if reason is not None:
        raise ModelError(reason)
    example = example_input(
        batch=2, size=size, layout=layout, channels_last=False, device=torch.device("cpu")
    )
    try:
        with _quiet():
            if isinstance(model, ExportedRuntime):
                # ep.module().to(device) may have moved the program's own weights with it.
                weights = [*model.program.state_dict.values(), *model.program.constants.values()]
                where = next((w.device for w in weights if isinstance(w, torch.Tensor)), None)
                with torch.no_grad():
                    program = torch.onnx.export(
                        model.program, (example.to(where or "cpu"),), dynamo=True
                    )
                if program is None:
                    raise ModelError("torch.onnx.export returned no program")
                return bytes(program.model_proto.SerializeToString())
            assert isinstance(model, TorchScriptRuntime)
            buffer = io.BytesIO()
            # A copy of its own (the runtime's module is left as it was), on the CPU.
            module = torch.jit.load(io.BytesIO(model.archive), map_location="cpu")  # type: ignore[no-untyped-call]
            with torch.no_grad():
                torch.onnx.export(
                    module.eval(),
                    (example,),
                    buffer,  # type: ignore[arg-type]  # the TorchScript exporter writes to any file
                    dynamo=False,
                    input_names=[_INPUT],
                    output_names=[_OUTPUT],
                    dynamic_axes={_INPUT: {0: "batch"}, _OUTPUT: {0: "batch"}},
                )
            return buffer.getvalue()
    except ModelError:
        raise
    except Exception as exc:
        raise ModelError(
            f"torch.onnx.export failed: {str(exc).strip().splitlines()[0][:300]}"
        ) from exc


def exported_runtime(
    data: bytes, *, device: torch.device, threads: int | None, label: str
) -> OnnxRuntime:
    """An ONNX Runtime session over an exported graph."""
    proto = onnx.load_from_string(data)
    return OnnxRuntime(
        proto, data, device, threads, f"{label} (exported to ONNX)", backend=EXPORTED_BACKEND
    )


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporters print progress and warn about optional packages: not the audit's output."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)
