"""An ONNX model as a static graph, its torus variant, and single-node runs.

Shapes come from ``onnx.shape_inference`` (with data propagation) on a copy of the model in
which every integer tensor computed from constants alone (pads, axes, shapes: what exporters
build with ConstantOfShape, Concat, Reshape, Slice and Cast) is folded into an initializer by
ONNX's reference evaluator; float constants are left to ONNX Runtime, so that the arithmetic
of the model is untouched. Layer entries are named by node output.

Single-node runs use one "detached" model, built once: a copy of every profiled node (in its
torus form) whose inputs are new graph inputs, so that all nodes run in one session call per
shift instead of one session per node.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper

from .channel_affine import ChannelAffine
from .graph import (
    Concat,
    Dense,
    GraphNode,
    Metadata,
    MixAll,
    Normalize,
    Op,
    Opaque,
    Permute,
    Pointwise,
    Reduce,
    Relayout,
    Select,
    Shape,
    Shift,
    Size,
    StaticGraph,
    Window,
    static_value,
)
from .receptive_fields import Field, FieldAnalysis
from .torus import (
    ONNX_WINDOW_OPS,
    OnnxTorus,
    TorusRefusal,
    _attribute,
    _Namer,
    onnx_pad_padding,
    onnx_unpadded,
    onnx_window_padding,
    onnx_wrap_nodes,
    same_pads,
)

SessionFactory = Callable[[bytes], Any]

_POINTWISE = frozenset(
    [
        "Add",
        "Sub",
        "Mul",
        "Div",
        "Pow",
        "Max",
        "Min",
        "Sum",
        "Mean",
        "Where",
        "Equal",
        "Less",
        "LessOrEqual",
        "Greater",
        "GreaterOrEqual",
        "And",
        "Or",
        "Xor",
        "Not",
        "Mod",
        "Relu",
        "LeakyRelu",
        "PRelu",
        "Elu",
        "Selu",
        "Celu",
        "Sigmoid",
        "HardSigmoid",
        "HardSwish",
        "Tanh",
        "Softplus",
        "Softsign",
        "Mish",
        "Gelu",
        "Erf",
        "Exp",
        "Log",
        "Sqrt",
        "Reciprocal",
        "Neg",
        "Abs",
        "Sign",
        "Floor",
        "Ceil",
        "Round",
        "Clip",
        "BatchNormalization",
        "Dropout",
        "Identity",
        "Cast",
        "CastLike",
        "QuantizeLinear",
        "DequantizeLinear",
        "ThresholdedRelu",
        "Shrink",
        "Sin",
        "Cos",
        "IsNaN",
        "IsInf",
        "LRN",
        "Expand",
    ]
)
_RELAYOUT = frozenset(["Reshape", "Flatten", "Squeeze", "Unsqueeze"])
_REDUCE = frozenset(
    [
        "ReduceMean",
        "ReduceMax",
        "ReduceMin",
        "ReduceSum",
        "ReduceProd",
        "ReduceL1",
        "ReduceL2",
        "ReduceLogSum",
        "ReduceLogSumExp",
        "ReduceSumSquare",
    ]
)
_GLOBAL_POOL = frozenset(["GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"])
_METADATA = frozenset(["Shape", "Size"])
_RANDOM = frozenset(
    ["RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial"]
)


def _dims(value_info: onnx.ValueInfoProto) -> Shape | None:
    """A value's static shape: dim_value, dim_param as a symbol, or None per axis."""
    tensor = value_info.type.tensor_type
    if not tensor.HasField("shape"):
        return None
    dims: list[Size | None] = []
    for dim in tensor.shape.dim:
        if dim.HasField("dim_value") and dim.dim_value > 0:
            dims.append(Size(dim.dim_value))
        elif dim.HasField("dim_param") and dim.dim_param:
            dims.append(Size(1, (dim.dim_param,)))
        else:
            dims.append(None)
    return tuple(dims)


def _has_subgraph(node: onnx.NodeProto) -> bool:
    return any(
        a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute
    )


def constant_values(
    model: onnx.ModelProto, known: Mapping[str, np.ndarray] | None = None
) -> dict[str, np.ndarray]:
    """Every tensor computed from initializers, Constant nodes and `known` values alone."""
    from onnx.reference import ReferenceEvaluator

    graph = model.graph
    seeded = dict(known or {})
    available = {init.name for init in graph.initializer} | set(seeded)
    nodes = []
    for node in graph.node:
        inputs = [name for name in node.input if name]
        if node.op_type in _RANDOM or _has_subgraph(node) or all(o in seeded for o in node.output):
            continue
        if node.op_type == "Constant" or (inputs and all(name in available for name in inputs)):
            nodes.append(node)
            available.update(node.output)
    values = dict(seeded)
    small = {init.name: init for init in graph.initializer if np.prod(init.dims) <= 4096}
    values.update({name: numpy_helper.to_array(init) for name, init in small.items()})
    if not nodes:
        return values
    used = {name for node in nodes for name in node.input if name}
    names = [name for node in nodes for name in node.output if name]
    subgraph = helper.make_graph(
        nodes,
        "constants",
        [],
        [helper.make_empty_tensor_value_info(name) for name in names],
        initializer=[init for init in graph.initializer if init.name in used]
        + [numpy_helper.from_array(np.asarray(v), n) for n, v in seeded.items() if n in used],
    )
    constant_model = helper.make_model(subgraph, opset_imports=model.opset_import)
    constant_model.ir_version = model.ir_version
    try:
        outputs = ReferenceEvaluator(constant_model).run(None, {})
    except Exception:
        return values  # shapes may then stay unknown; the ops that need them say so
    values.update({name: np.asarray(value) for name, value in zip(names, outputs, strict=True)})
    return values


def _with_batch_one(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose graph inputs have batch 1, so that shapes computed from the batch fold."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    initializers = {init.name for init in copy.graph.initializer}
    for value in copy.graph.input:
        dims = value.type.tensor_type.shape.dim
        if value.name not in initializers and len(dims) and not dims[0].dim_value:
            dims[0].Clear()
            dims[0].dim_value = 1
    return copy


def _shape_values(
    model: onnx.ModelProto, shapes: Mapping[str, Shape], known: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """The outputs of Shape nodes whose input shape is fully static."""
    found = {}
    for node in model.graph.node:
        if node.op_type != "Shape" or node.output[0] in known:
            continue
        shape = shapes.get(node.input[0])
        if shape is None or any(d is None or d.value is None for d in shape):
            continue
        dims = [int(d.value or 0) for d in shape if d is not None]
        start, end = int(_attribute(node, "start", 0)), _attribute(node, "end", None)
        found[node.output[0]] = np.array(
            dims[start : None if end is None else int(end)], dtype=np.int64
        )
    return found


def static_analysis(model: onnx.ModelProto) -> tuple[dict[str, np.ndarray], dict[str, Shape]]:
    """Constant values and static shapes of a model analysed at batch 1: shape inference with
    data propagation, repeated while Shape nodes on now-static tensors fold to constants."""
    analysed = _with_batch_one(model)
    constants = constant_values(analysed)
    shapes: dict[str, Shape] = {}
    for _ in range(8):
        shapes = _inferred_shapes(fold_integer_constants(analysed, constants))
        new = _shape_values(analysed, shapes, constants)
        if not new:
            break
        constants = constant_values(analysed, {**constants, **new})
    return constants, shapes


def _inferred_shapes(model: onnx.ModelProto) -> dict[str, Shape]:
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:
        inferred = model
    graph = inferred.graph
    shapes: dict[str, Shape] = {}
    for value in [*graph.input, *graph.value_info, *graph.output]:
        dims = _dims(value)
        if dims is not None:
            shapes[value.name] = dims
    for init in graph.initializer:
        shapes[init.name] = tuple(Size(int(d)) for d in init.dims)
    return shapes


def fold_integer_constants(
    model: onnx.ModelProto, values: Mapping[str, np.ndarray]
) -> onnx.ModelProto:
    """A copy in which integer tensors computed from constants are initializers, so that shape
    inference sees pads and shapes; the float arithmetic of the model stays as it was."""
    folded = onnx.ModelProto()
    folded.CopyFrom(model)
    graph = folded.graph
    initializers = {init.name for init in graph.initializer}
    computed = {name for name in values if name not in initializers}
    producers = {out: node for node in graph.node for out in node.output}
    integer = {
        name
        for name in computed
        if np.issubdtype(values[name].dtype, np.integer) or values[name].dtype == np.bool_
    }
    needed: set[str] = {o.name for o in graph.output}
    for node in graph.node:
        if not all(out in computed for out in node.output if out):
            needed.update(name for name in node.input if name)
    # Keep the constant nodes that compute a needed float, and their constant ancestors.
    keep: set[int] = set()
    stack = [producers[name] for name in needed if name in computed and name not in integer]
    while stack:
        node = stack.pop()
        if id(node) in keep:
            continue
        keep.add(id(node))
        stack += [
            producers[i]
            for i in node.input
            if i in computed and i in producers and i not in integer
        ]
    nodes = [
        node
        for node in graph.node
        if id(node) in keep or not all(out in computed for out in node.output if out)
    ]
    referenced = {name for node in nodes for name in node.input if name} | needed
    extra = [
        numpy_helper.from_array(np.asarray(values[name]), name)
        for name in sorted(integer & referenced)
    ]
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(extra)
    return folded


class OnnxGraph:
    """Static view, torus variant and single-node runs of one ONNX model."""

    def __init__(
        self, proto: onnx.ModelProto, *, session: SessionFactory, device: torch.device
    ) -> None:
        self._session, self.device = session, device
        self.constants = constant_values(proto)
        self.model = fold_integer_constants(proto, self.constants)
        initializers = {init.name for init in self.model.graph.initializer}
        graph_inputs = [v for v in self.model.graph.input if v.name not in initializers]
        self.input_name = graph_inputs[0].name
        self._input_type = graph_inputs[0].type.tensor_type.elem_type
        self._initializers = initializers
        self._producers = {
            out: node for node in self.model.graph.node for out in node.output if out
        }
        self.opset = next(
            (o.version for o in self.model.opset_import if o.domain in ("", "ai.onnx")), 1
        )
        # The static view reads a batch-1 copy; the runs use the model's own batch.
        self._static_constants, self._shapes = static_analysis(proto)
        self.static = self._static_graph()
        self.torus: OnnxTorus | None = None
        self.rewritten: list[str] = []
        self.refused: dict[str, str] = {}
        self._sessions: dict[Any, Any] = {}

    # --- the static graph ---------------------------------------------------------------

    def _static_graph(self) -> StaticGraph:
        activations = {self.input_name}
        nodes = []
        for node in self.model.graph.node:
            reads = tuple(name for name in node.input if name)
            if any(name in activations for name in reads):
                activations.update(out for out in node.output if out)
            for index, out in enumerate(node.output):
                if out:
                    op = self._op(node, index, activations)
                    nodes.append(GraphNode(out, node.op_type, reads, op))
        return StaticGraph(self.input_name, nodes, self._shapes, activations)

    def _constant_ints(self, name: str) -> list[int] | None:
        value = self._static_constants.get(name) if name else None
        return None if value is None else [int(v) for v in np.asarray(value).reshape(-1)]

    def _op(self, node: onnx.NodeProto, index: int, activations: set[str]) -> Op:
        """What the receptive-field arithmetic needs to know about one ONNX node output."""
        op_type = node.op_type
        label = f"{op_type} ({node.output[index]})"
        data = node.input[0] if node.input else ""
        shape = self._shapes.get(data)
        rank = len(shape) if shape is not None else 0
        reads = [name for name in node.input if name]

        def constant(position: int) -> bool:
            return position < len(node.input) and node.input[position] not in activations

        if node.domain not in ("", "ai.onnx"):
            return Opaque(f"the receptive field of {node.domain}.{label} is not known")
        if op_type in _METADATA:
            return Metadata()
        if op_type in ONNX_WINDOW_OPS:
            return self._window(node, index, label)
        if op_type in _GLOBAL_POOL:
            return Reduce(tuple(range(2, rank)), True) if rank else Opaque(f"{label}: unknown rank")
        if op_type in _POINTWISE:
            return Pointwise() if index == 0 or op_type != "Dropout" else Metadata()
        if op_type in _RELAYOUT:
            return Relayout()
        if op_type == "Transpose":
            perm = _attribute(node, "perm", list(reversed(range(rank))))
            return Permute(tuple(int(p) for p in perm))
        if op_type in _REDUCE:
            return self._reduce(node, rank, label)
        if op_type in ("ArgMax", "ArgMin"):
            return Reduce(
                (int(_attribute(node, "axis", 0)),), bool(_attribute(node, "keepdims", 1))
            )
        if op_type in ("Softmax", "LogSoftmax", "Hardmax"):
            axis = int(_attribute(node, "axis", -1 if self.opset >= 13 else 1))
            if self.opset < 13:  # the input is flattened from `axis` on
                return Normalize(tuple(range(axis % rank, rank)) if rank else (axis,))
            return Normalize((axis,))
        if op_type == "LayerNormalization":
            axis = int(_attribute(node, "axis", -1))
            return (
                Normalize(tuple(range(axis % rank, rank)))
                if rank
                else Opaque(f"{label}: unknown rank")
            )
        if op_type in ("InstanceNormalization", "GroupNormalization", "MeanVarianceNormalization"):
            first = 1 if op_type == "GroupNormalization" else 2
            axes = _attribute(node, "axes", list(range(first, rank)))
            return Normalize(tuple(int(a) for a in axes))
        if op_type == "LpNormalization":
            return Normalize((int(_attribute(node, "axis", -1)),))
        if op_type == "Gemm":
            if constant(1):
                return Dense(0, 0 if _attribute(node, "transA", 0) else 1)
            if constant(0):
                return Dense(reads.index(node.input[1]), 1 if _attribute(node, "transB", 0) else 0)
            return MixAll()
        if op_type == "MatMul":
            if constant(1):
                return Dense(0, -1)
            if constant(0):
                return Dense(reads.index(node.input[1]), -2)
            return MixAll()
        if op_type == "Concat":
            return Concat(int(_attribute(node, "axis", 0)))
        if op_type == "Slice":
            return self._slice(node, label)
        if op_type == "Pad":
            pads = (
                self._constant_ints(node.input[1])
                if len(node.input) > 1 and node.input[1]
                else [int(p) for p in _attribute(node, "pads", [])]
            )
            if pads is None:
                return Opaque(f"{label}: pads computed at run time")
            axes = list(range(rank))
            if len(node.input) > 3 and node.input[3]:
                found = self._constant_ints(node.input[3])
                if found is None:
                    return Opaque(f"{label}: axes computed at run time")
                axes = found
            half = len(pads) // 2
            return Shift(tuple((axes[i], pads[i]) for i in range(half)))
        if op_type == "Gather":
            indices = self._constant_ints(node.input[1]) if len(node.input) > 1 else None
            index_shape = self._static_constants.get(node.input[1]) if len(node.input) > 1 else None
            if indices is None or index_shape is None or np.asarray(index_shape).ndim != 0:
                return Opaque(
                    f"the receptive field of {label} with non-scalar indices is not known"
                )
            return Select(int(_attribute(node, "axis", 0)), indices[0])
        if op_type == "Split":
            return self._split(node, index, label)
        return Opaque(f"the receptive field of {label} is not known")

    def _kernel(self, node: onnx.NodeProto) -> list[int] | None:
        kernel = _attribute(node, "kernel_shape", None)
        if kernel is not None:
            return [int(k) for k in kernel]
        weight = self._shapes.get(node.input[1]) if len(node.input) > 1 else None
        if weight is None or len(weight) < 3:
            return None
        dims = [static_value(weight, axis) for axis in range(2, len(weight))]
        return None if None in dims else [int(d or 0) for d in dims]

    def _window(self, node: onnx.NodeProto, index: int, label: str) -> Op:
        if index > 0:
            return Metadata()  # MaxPool's indices
        kernel = self._kernel(node)
        if kernel is None or len(kernel) != 2:
            return Opaque(f"{label}: not a 2-D window")
        strides = [int(s) for s in _attribute(node, "strides", [1, 1])]
        dilations = [int(d) for d in _attribute(node, "dilations", [1, 1])]
        auto_pad = _attribute(node, "auto_pad", b"NOTSET")
        auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad)
        shape = self._shapes.get(node.input[0])
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            begins = []
            for a in range(2):
                length = static_value(shape, 2 + a)
                if length is None:
                    return Opaque(f"{label}: auto_pad {auto_pad} on an extent not known statically")
                begins.append(
                    same_pads(
                        length=length,
                        kernel=kernel[a],
                        stride=strides[a],
                        dilation=dilations[a],
                        upper=auto_pad == "SAME_UPPER",
                    )[0]
                )
        elif auto_pad == "VALID":
            begins = [0, 0]
        else:
            begins = [int(p) for p in _attribute(node, "pads", [0, 0, 0, 0])[:2]]
        return Window(
            (2, 3),
            (kernel[0], kernel[1]),
            (strides[0], strides[1]),
            (dilations[0], dilations[1]),
            (begins[0], begins[1]),
            node.op_type == "Conv",
        )

    def _reduce(self, node: onnx.NodeProto, rank: int, label: str) -> Op:
        keepdims = bool(_attribute(node, "keepdims", 1))
        axes = _attribute(node, "axes", None)
        if axes is None and len(node.input) > 1 and node.input[1]:
            axes = self._constant_ints(node.input[1])
            if axes is None:
                return Opaque(f"{label}: axes computed at run time")
        if not axes:
            if _attribute(node, "noop_with_empty_axes", 0):
                return Pointwise()
            axes = list(range(rank))
        return Reduce(tuple(int(a) for a in axes), keepdims)

    def _slice(self, node: onnx.NodeProto, label: str) -> Op:
        if self.opset < 10:
            starts = list(_attribute(node, "starts", []))
            axes = list(_attribute(node, "axes", range(len(starts))))
            steps = [1] * len(starts)
        else:
            found = [
                self._constant_ints(node.input[i]) if len(node.input) > i else None
                for i in (1, 3, 4)
            ]
            if found[0] is None:
                return Opaque(f"{label}: starts computed at run time")
            starts = found[0]
            axes = found[1] if found[1] is not None else list(range(len(starts)))
            steps = found[2] if found[2] is not None else [1] * len(starts)
        shape = self._shapes.get(node.input[0])
        begins, strides = [], []
        for axis, start, step in zip(axes, starts, steps, strict=True):
            if step < 1:
                return Opaque(f"{label}: a reversed slice")
            extent = static_value(shape, axis)
            if start < 0:
                if extent is None:
                    return Opaque(f"{label}: a slice from the end of an axis of unknown extent")
                start += extent
            if extent is not None:
                start = min(max(start, 0), extent)
            begins.append((int(axis), -int(start)))
            strides.append((int(axis), int(step)))
        return Shift(tuple(begins), tuple(strides))

    def _split(self, node: onnx.NodeProto, index: int, label: str) -> Op:
        axis = int(_attribute(node, "axis", 0))
        sizes = _attribute(node, "split", None)
        if sizes is None and len(node.input) > 1 and node.input[1]:
            sizes = self._constant_ints(node.input[1])
        if sizes is None:
            extent = static_value(self._shapes.get(node.input[0]), axis)
            if extent is None:
                return Opaque(f"{label}: split of an axis of unknown extent")
            parts = len(node.output)
            size = -(-extent // parts)
            sizes = [size] * parts
        return Shift(((axis, -sum(int(s) for s in sizes[:index])),))

    def layer_names(self) -> list[str]:
        """Every node output of rank 3 or 4 that is not a model output, in graph order: the
        tensors `forward_with_layers` records."""
        outputs = {o.name for o in self.model.graph.output}
        return [
            node.name
            for node in self.static.nodes
            if node.name not in outputs and len(self._shapes.get(node.name, ())) in (3, 4)
        ]

    def channel_affine(self, name: str) -> ChannelAffine | None:
        """The per-channel affine map `name` is of its input, for a BatchNormalization in
        inference whose statistics and weights are initializers; else None."""
        node = self._producers.get(name)
        if node is None or node.op_type != "BatchNormalization" or node.output[0] != name:
            return None
        attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if attributes.get("training_mode", 0) or any(out for out in node.output[1:]):
            return None
        data, *constants = node.input
        if len(self._shapes.get(data, ())) != 4 or len(constants) != 4:
            return None
        initializers = {init.name: init for init in self.model.graph.initializer}
        if any(c not in initializers for c in constants):
            return None
        weight, bias, mean, var = (
            torch.from_numpy(numpy_helper.to_array(initializers[c]).copy()) for c in constants
        )
        return ChannelAffine.of_batch_norm(
            data,
            weight=weight,
            bias=bias,
            mean=mean,
            var=var,
            eps=float(attributes.get("epsilon", 1e-5)),
        )

    # --- the torus variant ----------------------------------------------------------------

    def prepare_torus(self, analysis: FieldAnalysis) -> None:
        """Rewrite every padding circular; what cannot be rewritten is refused, by name."""
        graph = self.model.graph
        extra: list[onnx.TensorProto] = []
        chains: dict[str, list[onnx.NodeProto]] = {}
        nodes: list[onnx.NodeProto] = []
        ops = {n.name: n.op for n in self.static.nodes}
        for number, node in enumerate(graph.node):
            chain = [node]
            out = node.output[0] if node.output else ""
            # Only ops that read positions matter: those on shapes or constants stay as they are.
            reads_positions = any(
                isinstance(analysis.states.get(name), Field) for name in node.input if name
            )
            if reads_positions:
                try:
                    chain = self._torus_chain(node, number, analysis, extra)
                except TorusRefusal as refusal:
                    self.refused[out] = (
                        f"the torus rewrite cannot make {node.op_type} ({out}) circular: {refusal}"
                    )
                if chain is not None and len(chain) > 1:
                    self.rewritten.append(out)
                elif isinstance(ops.get(out), Opaque) and out not in self.refused:
                    self.refused[out] = f"the torus rewrite does not know {node.op_type} ({out})"
            chain = chain or [node]
            nodes += chain
            for name in node.output:
                if name:
                    chains[name] = chain
        model = onnx.ModelProto()
        model.CopyFrom(self.model)
        del model.graph.node[:]
        model.graph.node.extend(nodes)
        model.graph.initializer.extend(extra)
        self.torus = OnnxTorus(model, chains, self.rewritten, self.refused)

    def _torus_chain(
        self,
        node: onnx.NodeProto,
        number: int,
        analysis: FieldAnalysis,
        extra: list[onnx.TensorProto],
    ) -> list[onnx.NodeProto]:
        """The node itself, or the wrap nodes and the unpadded op that replace it."""
        namer = _Namer(f"shiftaudit.torus.{number}")
        source = node.input[0]
        shape = self._shapes.get(source)
        extents = {axis: static_value(shape, axis) for axis in range(len(shape or ()))}
        if node.op_type in ONNX_WINDOW_OPS:
            kernel = self._kernel(node)
            if kernel is None or len(kernel) != 2:
                raise TorusRefusal("only 2-D windows are rewritten")
            out_shape = self._shapes.get(node.output[0])
            padding = onnx_window_padding(
                node,
                kernel=kernel,
                lengths=[static_value(shape, 2), static_value(shape, 3)],
                outs=[static_value(out_shape, 2), static_value(out_shape, 3)],
            )
            if not padding.any:
                return [node]
            wrapped = namer("wrapped")
            wrap = onnx_wrap_nodes(
                source, wrapped, padding, extents=extents, namer=namer, initializers=extra
            )
            return [*wrap, onnx_unpadded(node, wrapped)]
        if node.op_type == "Pad":
            mode = _attribute(node, "mode", b"constant")
            if (mode.decode() if isinstance(mode, bytes) else mode) == "wrap":
                return [node]
            state = analysis.states.get(source)
            spatial = (
                [f.digit.axis for f in state.axes if f.digit is not None]
                if isinstance(state, Field)
                else None
            )
            pads = onnx_pad_padding(
                node, constants=self.constants, rank=len(shape or ()), spatial_axes=spatial
            )
            if not pads.any:
                return [node]
            return onnx_wrap_nodes(
                source, node.output[0], pads, extents=extents, namer=namer, initializers=extra
            )
        return [node]

    # --- runs -------------------------------------------------------------------------------

    def run(self, x: torch.Tensor, *, torus: bool, keep: set[str]) -> dict[str, Any]:
        """The values of the tensors in `keep`, deployed or on the torus variant."""
        # A torus variant that changed nothing is the deployed model: one set of sessions.
        variant = torus and self.torus is not None and bool(self.rewritten)
        names = sorted(keep - {self.input_name})
        session = self._exposing(variant, names)
        feed = {self.input_name: _host(x, helper.tensor_dtype_to_np_dtype(self._input_type))}
        values = session.run(names, feed)
        result = {n: self._tensor(v) for n, v in zip(names, values, strict=True)}
        if self.input_name in keep:
            result[self.input_name] = x
        return result

    def _exposing(self, variant: bool, names: Sequence[str]) -> Any:
        """A session of the model (or its torus variant) whose outputs include `names`: one
        built before for more outputs serves (ONNX Runtime runs the whole graph anyway)."""
        for (kind, torus, exposed), session in self._sessions.items():
            if kind == "full" and torus == variant and set(names) <= set(exposed):
                return session
        assert not variant or self.torus is not None
        model = self.torus.model if variant and self.torus is not None else self.model
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        present = {o.name for o in copy.graph.output}
        copy.graph.output.extend(
            helper.make_empty_tensor_value_info(n) for n in names if n not in present
        )
        session = self._session(copy.SerializeToString())
        self._sessions[("full", variant, tuple(names))] = session
        return session

    def inputs_of(self, cone: Sequence[str]) -> tuple[str, ...]:
        """The tensors a run of `cone` (node outputs in graph order) reads from outside it,
        weights excluded, in the order `run_alone` takes them."""
        produced = {out for name in cone for out in self._producers[name].output if out}
        seen: list[str] = []
        for name in cone:
            for tensor in self._producers[name].input:
                if (
                    tensor
                    and tensor not in self._initializers
                    and tensor not in produced
                    and tensor not in seen
                ):
                    seen.append(tensor)
        return tuple(seen)

    def run_alone(
        self, feeds: Mapping[str, tuple[Sequence[str], Sequence[Any]]]
    ) -> dict[str, torch.Tensor]:
        """Each cone of `feeds` (keyed by its last node), alone and in its torus form, all in
        one session call."""
        names = list(feeds)
        key = ("detached", tuple((name, tuple(feeds[name][0])) for name in names))
        if key not in self._sessions:
            self._sessions[key] = self._session(self._detached(feeds).SerializeToString())
        session = self._sessions[key]
        feed = {}
        for k, name in enumerate(names):
            for i, value in enumerate(feeds[name][1]):
                feed[f"shiftaudit.detached.{k}.in{i}"] = _host(value, None)
        outputs = session.run(None, feed)
        return {name: self._tensor(value) for name, value in zip(names, outputs, strict=True)}

    def _detached(
        self, feeds: Mapping[str, tuple[Sequence[str], Sequence[Any]]]
    ) -> onnx.ModelProto:
        """One model in which each cone reads its outside inputs from graph inputs of its own."""
        assert self.torus is not None
        nodes: list[onnx.NodeProto] = []
        inputs, outputs = [], []
        initializers = {init.name for init in self.torus.model.graph.initializer}
        for k, (name, (cone, values)) in enumerate(feeds.items()):
            prefix = f"shiftaudit.detached.{k}"
            rename = {}
            for i, (tensor, value) in enumerate(zip(self.inputs_of(cone), values, strict=True)):
                rename[tensor] = f"{prefix}.in{i}"
                array = _host(value, None)
                inputs.append(
                    helper.make_tensor_value_info(
                        rename[tensor], helper.np_dtype_to_tensor_dtype(array.dtype), array.shape
                    )
                )
            chain = list(dict.fromkeys(id(n) for member in cone for n in self.torus.chains[member]))
            members = {id(n): n for member in cone for n in self.torus.chains[member]}
            for node_id in chain:
                for out in members[node_id].output:
                    if out:
                        rename[out] = f"{prefix}/{out}"
            for node_id in chain:
                copy = onnx.NodeProto()
                copy.CopyFrom(members[node_id])
                copy.name = f"{prefix}/{copy.name}"
                for i, tensor in enumerate(copy.input):
                    if tensor and tensor not in initializers:
                        copy.input[i] = rename[tensor]
                for i, tensor in enumerate(copy.output):
                    if tensor:
                        copy.output[i] = rename[tensor]
                nodes.append(copy)
            outputs.append(helper.make_empty_tensor_value_info(rename[name]))
        used = {tensor for node in nodes for tensor in node.input}
        graph = helper.make_graph(
            nodes,
            "shiftaudit_detached",
            inputs,
            outputs,
            initializer=[i for i in self.torus.model.graph.initializer if i.name in used],
        )
        model = helper.make_model(graph, opset_imports=self.model.opset_import)
        model.ir_version = self.model.ir_version
        return model

    def _tensor(self, value: Any) -> torch.Tensor:
        array = np.asarray(value)
        tensor = torch.from_numpy(array.copy() if not array.flags.writeable else array)
        return tensor.to(self.device)


def _host(value: Any, dtype: Any) -> np.ndarray:
    """A numpy array of `value` (a tensor or an array), cast to `dtype` when one is given."""
    array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
    return np.ascontiguousarray(array if dtype is None else array.astype(dtype, copy=False))
