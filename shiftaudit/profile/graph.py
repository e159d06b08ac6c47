"""A format-neutral view of a model graph, read from ONNX or torch.export without running it.

Each node is reduced to what the receptive-field arithmetic needs (an `Op`), its inputs by
name and its static output shape. Sizes are monomials, a coefficient times symbols, so that a
symbolic batch `B` survives reshapes such as (L, B, D) -> (L * B, D) in attention blocks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Size:
    """coefficient * product(symbols): a static or symbolic extent of one axis."""

    coefficient: int
    symbols: tuple[str, ...] = ()

    def __mul__(self, other: Size) -> Size:
        return Size(
            self.coefficient * other.coefficient, tuple(sorted(self.symbols + other.symbols))
        )

    def divides(self, other: Size) -> bool:
        """Whether other / self is again a monomial with an integer coefficient."""
        if self.coefficient == 0 or other.coefficient % self.coefficient:
            return False
        rest = list(other.symbols)
        for symbol in self.symbols:
            if symbol not in rest:
                return False
            rest.remove(symbol)
        return True

    def __floordiv__(self, other: Size) -> Size:
        rest = list(self.symbols)
        for symbol in other.symbols:
            rest.remove(symbol)
        return Size(self.coefficient // other.coefficient, tuple(rest))

    @property
    def value(self) -> int | None:
        """The integer extent, or None when it is symbolic."""
        return None if self.symbols else self.coefficient


ONE = Size(1)
Shape = tuple[Size | None, ...]  # None: an extent that nothing tells statically


def product(sizes: Sequence[Size | None]) -> Size | None:
    """The product of `sizes`; None when any is unknown."""
    total = ONE
    for size in sizes:
        if size is None:
            return None
        total = total * size
    return total


def static_value(shape: Shape | None, axis: int) -> int | None:
    """The integer extent of `axis` of `shape`, when it is known and not symbolic."""
    if shape is None or not -len(shape) <= axis < len(shape):
        return None
    size = shape[axis]
    return None if size is None else size.value


@dataclass(frozen=True)
class Window:
    """A k x k window at stride s and dilation d over tensor axes (y, x), after pad_begin."""

    axes: tuple[int, int]
    kernel: tuple[int, int]
    stride: tuple[int, int]
    dilation: tuple[int, int]
    pad_begin: tuple[int, int]
    weighted: bool  # a convolution (learned weights per offset), not a pool


@dataclass(frozen=True)
class Shift:
    """Pad (begin > 0), crop (begin < 0) and subsampling (step) along single tensor axes."""

    begin: tuple[tuple[int, int], ...]  # (axis, units added before the first)
    step: tuple[tuple[int, int], ...] = ()  # (axis, every step-th unit kept)


@dataclass(frozen=True)
class Pointwise:
    """Element-wise over broadcast inputs: each output unit reads the same unit of each input."""


@dataclass(frozen=True)
class Relayout:
    """Reshape / flatten / squeeze / view: the same units in row-major order, a new shape."""


@dataclass(frozen=True)
class Permute:
    """Transpose: output axis i is input axis perm[i]."""

    perm: tuple[int, ...]


@dataclass(frozen=True)
class Reduce:
    """A reduction (mean, max, sum, ...) over `axes` of its first input."""

    axes: tuple[int, ...]
    keepdims: bool


@dataclass(frozen=True)
class Dense:
    """A learned dense map contracting `axis` of input `operand`; the other operand is constant."""

    operand: int
    axis: int


@dataclass(frozen=True)
class MixAll:
    """A product of two activations (attention): every output unit may read every position."""


@dataclass(frozen=True)
class Normalize:
    """Statistics over `axes` rescale every unit (softmax, layer / instance / group norm)."""

    axes: tuple[int, ...]


@dataclass(frozen=True)
class Concat:
    """Inputs joined along `axis`."""

    axis: int


@dataclass(frozen=True)
class Select:
    """One index of `axis` taken, the axis dropped (select, scalar gather)."""

    axis: int
    index: int


@dataclass(frozen=True)
class Metadata:
    """Reads shapes, not values (Shape, Size): its output has no receptive field."""


@dataclass(frozen=True)
class Opaque:
    """An op whose receptive-field arithmetic is not known; `reason` names it."""

    reason: str


Op = (
    Window
    | Shift
    | Pointwise
    | Relayout
    | Permute
    | Reduce
    | Dense
    | MixAll
    | Normalize
    | Concat
    | Select
    | Metadata
    | Opaque
)


@dataclass(frozen=True)
class GraphNode:
    """One node: `name` is its output, as layer entries are named; `inputs` are tensor names."""

    name: str
    op_type: str
    inputs: tuple[str, ...]
    op: Op


@dataclass
class StaticGraph:
    """Nodes in topological order, static shapes, and which tensors depend on the input."""

    input_name: str
    nodes: list[GraphNode]
    shapes: dict[str, Shape]
    activations: set[str] = field(default_factory=set)  # tensors computed from the input

    def node(self, name: str) -> GraphNode | None:
        """The node producing tensor `name`, if any."""
        for node in self.nodes:
            if node.name == name:
                return node
        return None
