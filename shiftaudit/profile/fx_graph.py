"""A torch.export program as a static graph, its torus variant, and single-node runs.

The graph is the one `ExportedRuntime` runs (``ep.module()``), so its node names are the
names of the layer entries. Shapes come from each node's ``meta["val"]``; a symbolic batch
stays a symbol. A ``getitem`` of an op that returns several tensors (max pooling with
indices, batch norm, split) stands for that op's output: it is the node, and a single-node
run calls the op and takes the item.
"""

from __future__ import annotations

import operator
import threading
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from typing import Any

import torch
import torch.fx

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
from .torus import TorusRefusal, _bound, _pair, fx_padding_op, fx_pads, fx_torus_call

_POINTWISE = frozenset(
    [
        "add",
        "sub",
        "mul",
        "div",
        "rsub",
        "true_divide",
        "floor_divide",
        "remainder",
        "fmod",
        "pow",
        "maximum",
        "minimum",
        "where",
        "relu",
        "relu6",
        "hardtanh",
        "hardswish",
        "hardsigmoid",
        "silu",
        "gelu",
        "sigmoid",
        "tanh",
        "elu",
        "selu",
        "celu",
        "leaky_relu",
        "prelu",
        "mish",
        "softplus",
        "clamp",
        "clamp_min",
        "clamp_max",
        "abs",
        "neg",
        "exp",
        "log",
        "sqrt",
        "rsqrt",
        "reciprocal",
        "erf",
        "sign",
        "floor",
        "ceil",
        "round",
        "trunc",
        "masked_fill",
        "eq",
        "ne",
        "lt",
        "le",
        "gt",
        "ge",
        "logical_and",
        "logical_or",
        "logical_not",
        "bitwise_and",
        "bitwise_or",
        "batch_norm",
        "_native_batch_norm_legit_no_training",
        "native_batch_norm",
        "dropout",
        "alias",
        "clone",
        "contiguous",
        "detach",
        "_to_copy",
        "to",
        "type_as",
        "lift_fresh_copy",
        "expand",
        "expand_as",
        "zeros_like",
        "ones_like",
        "full_like",
        "empty_like",
        "fill",
        "scalar_tensor",
        "copy",
    ]
)
_BATCH_NORMS = frozenset(
    ["batch_norm", "_native_batch_norm_legit_no_training", "native_batch_norm"]
)
_RELAYOUT = frozenset(
    ["view", "reshape", "_unsafe_view", "flatten", "unflatten", "squeeze", "unsqueeze", "view_as"]
)
_REDUCE = frozenset(
    ["mean", "sum", "amax", "amin", "max", "min", "prod", "logsumexp", "var", "std", "any", "all"]
)
_NORMALIZE_LAST = frozenset(["layer_norm", "native_layer_norm"])
_METADATA = frozenset(["sym_size", "sym_numel", "sym_stride", "sym_storage_offset", "size"])
_ATTENTION = frozenset(
    [
        "scaled_dot_product_attention",
        "_scaled_dot_product_flash_attention",
        "_scaled_dot_product_efficient_attention",
        "_scaled_dot_product_flash_attention_for_cpu",
    ]
)


def _size(dimension: Any) -> Size | None:
    """An int or SymInt extent as a monomial; None for anything but coefficient * symbols."""
    if isinstance(dimension, int):
        return Size(dimension)
    expr = getattr(getattr(dimension, "node", None), "expr", None)
    if expr is None:
        return None
    coefficient, rest = expr.as_coeff_Mul()
    if not coefficient.is_Integer:
        return None
    if rest == 1:
        return Size(int(coefficient))
    symbols: list[str] = []
    for base, power in rest.as_powers_dict().items():
        if not base.is_Symbol or not power.is_Integer or int(power) < 1:
            return None
        symbols += [str(base)] * int(power)
    return Size(int(coefficient), tuple(sorted(symbols)))


def _shape(value: Any) -> Shape | None:
    if isinstance(value, torch.Tensor):
        return tuple(_size(d) for d in value.shape)
    return None


def _node_inputs(node: torch.fx.Node) -> list[torch.fx.Node]:
    """The nodes a node reads, in argument order (a node read twice appears twice)."""
    found: list[torch.fx.Node] = []

    def collect(n: torch.fx.Node) -> torch.fx.Node:
        found.append(n)
        return n

    torch.fx.node.map_arg((node.args, node.kwargs), collect)
    return found


def _source(node: torch.fx.Node) -> tuple[torch.fx.Node, int | None]:
    """The node that computes `node`'s value, and the item it takes of a multi-output op."""
    if node.target is operator.getitem and isinstance(node.args[0], torch.fx.Node):
        source = node.args[0]
        if isinstance(source.meta.get("val"), (tuple, list)) and isinstance(node.args[1], int):
            return source, node.args[1]
    return node, None


class FxGraph:
    """Static view, torus variant and single-node runs of one ``ep.module()`` graph."""

    def __init__(self, module: torch.fx.GraphModule) -> None:
        self.module = module
        self._nodes = {n.name: n for n in module.graph.nodes}
        placeholders = [n for n in module.graph.nodes if n.op == "placeholder"]
        self.input_name = placeholders[0].name
        self.static = self._static_graph()
        self.rewritten: list[str] = []
        self.refused: dict[str, str] = {}
        self._runs: dict[tuple[bool, tuple[str, ...]], torch.fx.GraphModule] = {}
        self._lock = threading.Lock()  # runs go on in worker threads (layer_profile.py)

    # --- the static graph ---------------------------------------------------------------

    def _static_graph(self) -> StaticGraph:
        shapes: dict[str, Shape] = {}
        activations = {self.input_name}
        nodes: list[GraphNode] = []
        for node in self.module.graph.nodes:
            shape = _shape(node.meta.get("val"))
            if shape is not None:
                shapes[node.name] = shape
            if node.op != "call_function":
                continue
            source, item = _source(node)
            reads = _node_inputs(source)
            if any(r.name in activations for r in reads):
                activations.add(node.name)
            if isinstance(source.meta.get("val"), (tuple, list)) and item is None:
                continue  # the tuple itself; its getitems are the nodes
            op = self._op(source, item, reads, shapes, activations)
            nodes.append(GraphNode(node.name, str(source.target), tuple(r.name for r in reads), op))
        return StaticGraph(self.input_name, nodes, shapes, activations)

    def _op(
        self,
        node: torch.fx.Node,
        item: int | None,
        reads: Sequence[torch.fx.Node],
        shapes: Mapping[str, Shape],
        activations: set[str],
    ) -> Op:
        """What the receptive-field arithmetic needs to know about one aten call."""
        target = node.target
        if not isinstance(target, torch._ops.OpOverload):
            return Metadata()  # Python arithmetic on sizes
        packet = target.overloadpacket.__name__
        bound = _bound(target, node.args, node.kwargs)
        data = reads[0].name if reads else None
        rank = len(shapes.get(data, ())) if data is not None else 0

        def operand(name: str) -> int:
            value = bound[name]
            return next(i for i, r in enumerate(reads) if r is value)

        def constant(name: str) -> bool:
            value = bound.get(name)
            return isinstance(value, torch.fx.Node) and value.name not in activations

        if packet in _METADATA:
            return Metadata()
        if packet in ("conv2d", "convolution"):
            return self._conv(node, bound, packet)
        if packet in ("max_pool2d", "max_pool2d_with_indices", "avg_pool2d"):
            if item not in (None, 0):
                return Metadata()  # the indices
            kernel = _pair(bound["kernel_size"])
            stride = _pair(bound["stride"]) if bound["stride"] else kernel
            dilation = _pair(bound.get("dilation", 1)) if packet != "avg_pool2d" else (1, 1)
            return Window((2, 3), kernel, stride, dilation, _pair(bound["padding"]), False)
        if packet in ("adaptive_avg_pool2d", "adaptive_max_pool2d", "_adaptive_avg_pool2d"):
            return self._adaptive(node, bound, shapes)
        if packet in (
            "pad",
            "constant_pad_nd",
            "_pad_circular",
            "reflection_pad2d",
            "replication_pad2d",
        ):
            pad = bound["pad"] if "pad" in bound else bound["padding"]
            amounts = [int(p) for p in pad]
            begin = tuple((rank - 1 - i // 2, amounts[i]) for i in range(0, len(amounts), 2))
            return Shift(begin)
        if packet in ("slice",):
            return self._slice(bound, shapes.get(data) if data else None)
        if packet == "narrow":
            return Shift(((int(bound["dim"]), -int(bound["start"])),))
        if packet in ("split", "split_with_sizes", "chunk", "unbind"):
            return self._split(packet, bound, item, shapes.get(data) if data else None)
        if packet == "select":
            return Select(int(bound["dim"]), int(bound["index"]))
        if packet == "cat":
            return Concat(int(bound.get("dim", 0)))
        if packet in ("permute",):
            return Permute(tuple(int(d) % rank for d in bound["dims"]))
        if packet in ("transpose", "swapaxes"):
            first, second = ("dim0", "dim1") if "dim0" in bound else ("axis0", "axis1")
            perm = list(range(rank))
            a, b = int(bound[first]) % rank, int(bound[second]) % rank
            perm[a], perm[b] = perm[b], perm[a]
            return Permute(tuple(perm))
        if packet in ("t", "numpy_T"):
            return Permute(tuple(reversed(range(rank))))
        if packet in _RELAYOUT:
            return Relayout()
        if packet in ("max", "min") and target._overloadname in ("other", "binary"):
            return Pointwise()
        if packet in _REDUCE:
            dims = bound.get("dim")
            if dims is None or dims == []:
                axes: tuple[int, ...] = tuple(range(rank))
            else:
                axes = tuple(int(d) for d in ([dims] if isinstance(dims, int) else dims))
            if item not in (None, 0):
                return Metadata()  # the indices of max / min
            return Reduce(axes, bool(bound.get("keepdim", False)))
        if packet in ("softmax", "_softmax", "log_softmax", "_log_softmax"):
            return Normalize((int(bound["dim"]),))
        if packet in _NORMALIZE_LAST:
            if item not in (None, 0):
                return Metadata()
            count = len(bound["normalized_shape"])
            return Normalize(tuple(range(rank - count, rank)))
        if packet in ("group_norm", "native_group_norm", "instance_norm"):
            return Normalize(tuple(range(1 if "group" in packet else 2, rank)))
        if packet == "linear":
            return Dense(0, -1) if constant("weight") else MixAll()
        if packet in ("mm", "matmul", "bmm"):
            other = "mat2" if "mat2" in bound else "other"
            if constant(other):
                return Dense(0, -1)
            if constant("self"):
                return Dense(operand(other), -2)
            return MixAll()
        if packet in ("addmm", "baddbmm"):
            first, second = ("mat1", "mat2") if "mat1" in bound else ("batch1", "batch2")
            if constant(second):
                return Dense(operand(first), -1)
            if constant(first):
                return Dense(operand(second), -2)
            return MixAll()
        if packet in _ATTENTION:
            return MixAll() if item in (None, 0) else Metadata()
        if packet in _POINTWISE or torch.Tag.pointwise in target.tags:
            return Pointwise()
        return Opaque(f"the receptive field of {target} ({node.name}) is not known")

    def _conv(self, node: torch.fx.Node, bound: dict[str, Any], packet: str) -> Op:
        weight = bound["weight"]
        value = weight.meta.get("val") if isinstance(weight, torch.fx.Node) else None
        if not isinstance(value, torch.Tensor) or value.dim() != 4:
            return Opaque(f"{node.target} ({node.name}): not a 2-D convolution")
        if packet == "convolution" and bound["transposed"]:
            return Opaque(f"{node.target} ({node.name}): transposed convolution")
        kernel = (int(value.shape[2]), int(value.shape[3]))
        dilation = _pair(bound["dilation"])
        padding = bound["padding"]
        if padding == "valid":
            pad = (0, 0)
        elif padding == "same":  # torch's "same": the odd unit after
            pad = (dilation[0] * (kernel[0] - 1) // 2, dilation[1] * (kernel[1] - 1) // 2)
        else:
            pad = _pair(padding)
        return Window((2, 3), kernel, _pair(bound["stride"]), dilation, pad, True)

    def _adaptive(
        self, node: torch.fx.Node, bound: dict[str, Any], shapes: Mapping[str, Shape]
    ) -> Op:
        source = bound["self"]
        shape = shapes.get(source.name) if isinstance(source, torch.fx.Node) else None
        out = _pair(bound["output_size"])
        if out == (1, 1):
            return Reduce((-2, -1), True)
        height, width = static_value(shape, -2), static_value(shape, -1)
        if height is None or width is None or height % out[0] or width % out[1]:
            return Opaque(f"{node.target} ({node.name}): windows of unequal size")
        kernel = (height // out[0], width // out[1])
        return Window((2, 3), kernel, kernel, (1, 1), (0, 0), False)

    @staticmethod
    def _slice(bound: dict[str, Any], shape: Shape | None) -> Op:
        dim = int(bound.get("dim", 0))
        start = bound.get("start") or 0
        step = int(bound.get("step", 1) or 1)
        if not isinstance(start, int):
            return Opaque("a slice with a symbolic start")
        if start < 0:
            extent = static_value(shape, dim)
            if extent is None:
                return Opaque("a slice from the end of an axis of unknown extent")
            start += extent
        return Shift(((dim, -start),), ((dim, step),))

    @staticmethod
    def _split(packet: str, bound: dict[str, Any], item: int | None, shape: Shape | None) -> Op:
        dim = int(bound.get("dim", 0))
        if packet == "unbind":
            return Select(dim, item or 0)
        extent = static_value(shape, dim)
        if packet == "chunk":
            if extent is None:
                return Opaque("a chunk of an axis of unknown extent")
            size = -(-extent // int(bound["chunks"]))
            sizes = [size] * int(bound["chunks"])
        elif packet == "split" and isinstance(bound["split_size"], int):
            sizes = [int(bound["split_size"])] * (item or 0)
        else:
            sizes = [int(s) for s in bound.get("split_sizes", bound.get("split_size", []))]
        return Shift(((dim, -sum(sizes[: item or 0])),))

    def layer_names(self) -> list[str]:
        """Every call whose value is a tensor of rank 3 or 4, in graph order: the tensors
        `forward_with_layers` records."""
        return [
            node.name
            for node in self.module.graph.nodes
            if node.op == "call_function"
            and isinstance(node.meta.get("val"), torch.Tensor)
            and node.meta["val"].dim() in (3, 4)
        ]

    def channel_affine(self, name: str) -> ChannelAffine | None:
        """The per-channel affine map `name` is of its input, for a batch norm in inference
        whose statistics and weights are constants of the graph; else None."""
        node = self._nodes.get(name)
        if node is None or node.op != "call_function":
            return None
        source, item = _source(node)
        target = source.target
        if item not in (None, 0) or not isinstance(target, torch._ops.OpOverload):
            return None
        if target.overloadpacket.__name__ not in _BATCH_NORMS:
            return None
        bound = _bound(target, source.args, source.kwargs)
        data = bound.get("input")
        value = data.meta.get("val") if isinstance(data, torch.fx.Node) else None
        if bound.get("training", False) or not isinstance(value, torch.Tensor) or value.dim() != 4:
            return None
        tensors = {k: self._constant(bound.get(k)) for k in ("weight", "bias")}
        mean, var = (
            self._constant(bound.get("running_mean")),
            self._constant(bound.get("running_var")),
        )
        if any(bound.get(k) is not None and v is None for k, v in tensors.items()):
            return None  # a weight computed in the graph
        if mean is None or var is None:
            return None
        assert isinstance(data, torch.fx.Node)
        return ChannelAffine.of_batch_norm(
            data.name,
            weight=tensors["weight"],
            bias=tensors["bias"],
            mean=mean,
            var=var,
            eps=float(bound["eps"]),
        )

    def _constant(self, argument: Any) -> torch.Tensor | None:
        """The tensor a get_attr node holds, else None."""
        if not isinstance(argument, torch.fx.Node) or argument.op != "get_attr":
            return None
        value: Any = self.module
        for part in str(argument.target).split("."):
            value = getattr(value, part)
        return value if isinstance(value, torch.Tensor) else None

    # --- the torus variant ----------------------------------------------------------------

    def prepare_torus(self, analysis: FieldAnalysis) -> None:
        """Which nodes the torus variant changes, and which it cannot make circular: an op
        whose arithmetic is not known and that reads positions (a tensor with a field)."""
        for graph_node in self.static.nodes:
            node = self._nodes[graph_node.name]
            source, _ = _source(node)
            if not any(isinstance(analysis.states.get(i), Field) for i in graph_node.inputs):
                continue
            if isinstance(graph_node.op, Opaque):
                self.refused[graph_node.name] = (
                    f"the torus rewrite does not know {source.target} ({graph_node.name})"
                )
                continue
            args, kwargs = self._meta_args(source)
            try:
                if fx_pads(source.target, args, kwargs):
                    self.rewritten.append(graph_node.name)
            except TorusRefusal as refusal:
                self.refused[graph_node.name] = (
                    f"the torus rewrite cannot make {source.target} ({graph_node.name}) "
                    f"circular: {refusal}"
                )

    @staticmethod
    def _meta_args(node: torch.fx.Node) -> tuple[Any, Any]:
        """The node's arguments with every input node replaced by its example value."""
        return torch.fx.node.map_aggregate(
            (node.args, node.kwargs),
            lambda a: a.meta.get("val") if isinstance(a, torch.fx.Node) else a,
        )

    def run(self, x: torch.Tensor, *, torus: bool, keep: set[str]) -> dict[str, Any]:
        """The values of the nodes in `keep`, deployed or on the torus variant."""
        module, names = self._exposing(torus=torus, keep=keep)
        with torch.no_grad():
            values = module(x)
        return dict(zip(names, values, strict=True))

    def _exposing(
        self, *, torus: bool, keep: Collection[str]
    ) -> tuple[torch.fx.GraphModule, tuple[str, ...]]:
        """A copy of the graph, compiled to Python like ``ep.module()``, that returns the nodes
        in `keep` (in graph order) and runs only what they need, its padding calls made
        circular on the torus variant.

        Generated code, not an interpreter: `torch.fx.Interpreter` spent 5 of MobileNetV2's
        22 ms a probe (one thread, 224 px) dispatching its nodes one by one."""
        names = tuple(name for name in self._nodes if name in keep)
        with self._lock:
            built = self._runs.get((torus, names))
            if built is None:
                graph = torch.fx.Graph()
                copies: dict[torch.fx.Node, torch.fx.Node] = {}
                for node in self.module.graph.nodes:
                    if node.op == "output":
                        continue
                    copy = graph.node_copy(node, lambda n: copies[n])
                    if torus and node.op == "call_function" and fx_padding_op(node.target):
                        copy.target = _torus_call(node.target)
                    copies[node] = copy
                graph.output(tuple(copies[self._nodes[name]] for name in names))
                built = torch.fx.GraphModule(self.module, graph)
                built.graph.eliminate_dead_code()  # what no kept node reads (asserts stay)
                built.recompile()
                self._runs[(torus, names)] = built
        return built, names

    def inputs_of(self, cone: Sequence[str]) -> tuple[str, ...]:
        """The values a run of `cone` (nodes in graph order) reads from outside it, in the
        order `run_alone` takes them."""
        inside = set(cone)
        found: list[str] = []
        for name in cone:
            source, _ = _source(self._nodes[name])
            found += [n.name for n in _node_inputs(source) if n.name not in inside]
        return tuple(found)

    def run_alone(
        self, feeds: Mapping[str, tuple[Sequence[str], Sequence[Any]]]
    ) -> dict[str, torch.Tensor]:
        """Each cone of `feeds` (keyed by its last node), alone and in its torus form, on the
        given outside values."""
        results = {}
        with torch.no_grad():
            for name, (cone, values) in feeds.items():
                supply = iter(values)
                computed: dict[str, Any] = {}
                for member in cone:
                    source, item = _source(self._nodes[member])
                    reads = [
                        computed[n.name] if n.name in computed else next(supply)
                        for n in _node_inputs(source)
                    ]
                    args, kwargs = _substituted(source, reads)
                    out = fx_torus_call(source.target, args, kwargs)
                    computed[member] = out[item] if item is not None else out
                results[name] = computed[name]
        return results


def _substituted(node: torch.fx.Node, values: Sequence[Any]) -> tuple[Any, Any]:
    """The node's (args, kwargs) with its input nodes replaced by `values`, in order."""
    supply: Iterator[Any] = iter(values)
    return torch.fx.node.map_arg((node.args, node.kwargs), lambda _: next(supply))


def _torus_call(target: Any) -> Callable[..., Any]:
    """`target` as the torus variant calls it, as a named function generated code can call."""

    def call(*args: Any, **kwargs: Any) -> Any:
        return fx_torus_call(target, args, kwargs)

    call.__name__ = call.__qualname__ = f"torus_{target.overloadpacket.__name__}"
    return call
