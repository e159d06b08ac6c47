"""ONNX Runtime sessions for ONNX files, and a second session exposing every layer."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch

from shiftaudit.errors import ModelError
from shiftaudit.input_contract import declared_input
from shiftaudit.model_files import ModelFormat, onnx_dims
from shiftaudit.runtimes.base import LayerOutput, Runtime

_ORT_DTYPES = {
    "tensor(float)": torch.float32,
    "tensor(float16)": torch.float16,
    "tensor(double)": torch.float64,
}
_NP_DTYPES = {torch.float32: np.float32, torch.float16: np.float16, torch.float64: np.float64}


class OnnxRuntime(Runtime):
    """ONNX Runtime session; the per-layer session is built on first use."""

    supports_channels_last = False

    def __init__(
        self,
        proto: onnx.ModelProto,
        data: bytes,
        device: torch.device,
        threads: int | None,
        label: str,
        *,
        backend: str = "onnxruntime",
    ) -> None:
        """`backend`: "onnxruntime" for an ONNX file, "onnxruntime-exported" for a graph the
        engine exported from a torch model (runtimes.conversion)."""
        self.format, self.device, self._proto, self._label = ModelFormat.ONNX, device, proto, label
        self.backend, self.threads, self._data = backend, threads, data
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
        self.execution_provider = self._session.get_providers()[0]
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
        self.declared = declared_input(
            onnx_dims(by_name[self._input_name]) if self._input_name in by_name else None,
            onnx_dims(outputs[0]) if outputs else None,
            self._input_name,
        )
        self._layer_session: Any = None
        self._layer_ops: dict[str, str] = {}

    def with_threads(self, threads: int) -> OnnxRuntime:
        """The same graph in a session of its own with `threads` intra-op threads."""
        if threads == self.threads:
            return self
        return OnnxRuntime(
            self._proto, self._data, self.device, threads, self._label, backend=self.backend
        )

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
                dims = onnx_dims(infos[name]) if name in infos else None
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

    # --- Graph access for the layer profile (shiftaudit/profile) -------------------------

    @property
    def proto(self) -> onnx.ModelProto:
        """The loaded model, to read its graph and to build rewritten copies of it."""
        return self._proto

    def session_for(self, model: bytes, *, threads: int | None = None) -> Any:
        """A session of a rewritten copy of this model, on the same providers and threads (or
        `threads` intra-op threads).

        Its threads do not spin while idle: the layer profile alternates these sessions with
        torch work on the same cores, which spinning threads would slow down.
        """
        options = ort.SessionOptions()
        options.log_severity_level = self._options.log_severity_level
        options.intra_op_num_threads = (
            self._options.intra_op_num_threads if threads is None else threads
        )
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            return ort.InferenceSession(model, options, providers=self._providers)
        except Exception as exc:
            raise ModelError(f"{self._label}: ONNX Runtime cannot load the model: {exc}") from exc
