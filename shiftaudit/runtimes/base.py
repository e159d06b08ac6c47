"""What every runtime of a classifier offers: logits for a batch, and every intermediate map."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch

from shiftaudit.errors import ModelError
from shiftaudit.input_contract import DeclaredInput, shape_str
from shiftaudit.model_files import ModelFormat

_OUT_OF_MEMORY = re.compile(
    r"out of memory|can't allocate|cannot allocate|failed to allocate|bad_alloc", re.IGNORECASE
)


def is_out_of_memory(error: BaseException) -> bool:
    """Whether an error means memory ran out (rather than that the input was wrong)."""
    return isinstance(error, MemoryError | torch.OutOfMemoryError) or bool(
        _OUT_OF_MEMORY.search(str(error))
    )


@dataclass
class LayerOutput:
    """One intermediate activation recorded by ``forward_with_layers``."""

    name: str
    op_type: str
    value: torch.Tensor


def _first_tensor(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out:
        return _first_tensor(out[0])
    if isinstance(out, dict) and out:
        return _first_tensor(next(iter(out.values())))
    raise ModelError(f"model returned {type(out).__name__}; expected a tensor of logits")


def logits_of(out: Any) -> torch.Tensor:
    """First tensor of the output, trailing singleton dims squeezed, as (B, classes) float32."""
    t = _first_tensor(out)
    while t.dim() > 2 and t.shape[-1] == 1:
        t = t.squeeze(-1)
    if t.dim() != 2:
        raise ModelError(
            f"model output has shape {tuple(t.shape)}; expected (batch, num_classes) logits"
        )
    return t.float()


class Runtime:
    """A classifier ready to run; ``load_runtime`` returns one of its format-specific subclasses."""

    format: ModelFormat
    declared: DeclaredInput
    device: torch.device
    layers_unavailable_reason: str | None = None
    supports_channels_last: bool = True
    # What runs the forward pass (config.RuntimeConfig.backend names these) and, for ONNX
    # Runtime, on which execution provider.
    backend: str = "torch"
    execution_provider: str | None = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, num_classes) float32 on ``self.device`` for a batch in the model's layout."""
        return logits_of(self._guarded(self._forward, x))

    def forward_with_layers(self, x: torch.Tensor) -> tuple[torch.Tensor, list[LayerOutput]]:
        """Logits plus every rank-3/4 intermediate tensor, in graph order."""
        if self.layers_unavailable_reason is not None:
            raise ModelError(self.layers_unavailable_reason)
        out, layers = self._guarded(self._forward_layers, x)
        return logits_of(out), layers

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
            expects = (
                f"it expects {shape_str(d.layout, d.channels, d.height, d.width)}"
                if d.layout
                else "it declares no input shape"
            )
            raise ModelError(
                f"{self.format} model failed on input of shape {tuple(x.shape)} ({expects}): "
                f"{_last_line(exc)}"
            ) from exc

    def _forward(self, x: torch.Tensor) -> Any:
        raise NotImplementedError

    def _forward_layers(self, x: torch.Tensor) -> tuple[Any, list[LayerOutput]]:
        raise NotImplementedError


def _last_line(exc: Exception) -> str:
    """The line of a runtime's message that says what went wrong.

    TorchScript and ONNX Runtime put their own trace first (serialized code, the author's
    source paths) and the error itself last; the whole trace stays on the sandbox's stderr.
    """
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__
