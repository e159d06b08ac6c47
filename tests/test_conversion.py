"""Exporting a loaded torch model to ONNX for ONNX Runtime (runtimes/conversion.py)."""

from __future__ import annotations

import pytest
import torch

from shiftaudit.errors import ModelError
from shiftaudit.runtimes import load_runtime
from shiftaudit.runtimes.conversion import exportable, exported_runtime, onnx_bytes

from .nets import TinyViT, export_all


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    return export_all(TinyViT(), tmp_path_factory.mktemp("vit"))


@pytest.mark.parametrize("fmt", ["torch_export", "torchscript"])
def test_the_export_computes_the_model_at_any_batch_size(paths, fmt):
    model = load_runtime(paths[fmt])
    exported = exported_runtime(
        onnx_bytes(model, size=(16, 16), layout="NCHW"), device=model.device, threads=1, label="m"
    )
    assert exported.backend == "onnxruntime-exported"
    assert exported.execution_provider == "CPUExecutionProvider"
    for batch in (1, 5):
        x = torch.randn(batch, 3, 16, 16, generator=torch.Generator().manual_seed(batch))
        assert torch.allclose(exported(x), model(x), atol=1e-5)


def test_exporting_torchscript_leaves_the_models_own_runtime_usable(paths):
    """The TorchScript exporter runs a module with autograd on; had it run the runtime's own
    module, the JIT would keep differentiable graphs that fail under inference mode."""
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    before = load_runtime(paths["torchscript"])(x)  # another copy of the same file
    model = load_runtime(paths["torchscript"])
    onnx_bytes(model, size=(16, 16), layout="NCHW")  # before the model ever ran: the JIT's
    with torch.inference_mode():  # first runs then come after the exporter's
        for _ in range(3):  # the JIT specialises a graph over the first runs
            assert torch.equal(model(x), before)


def test_only_torch_models_are_exported(paths):
    onnx = load_runtime(paths["onnx"])
    assert exportable(onnx) is not None
    with pytest.raises(ModelError, match="only torch models"):
        onnx_bytes(onnx, size=(16, 16), layout="NCHW")
    assert exportable(load_runtime(paths["torch_export"])) is None
