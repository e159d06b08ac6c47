"""Static receptive fields (science.md, report 1.2), read from the graph without running it.

Dang Ha The Hien's arithmetic, per image axis, in topological order, with the input's pixel i
centred at i + 1/2 (so the image spans [0, H]):

    k_eff     = d (k - 1) + 1
    jump_out  = jump_in * s
    rf_out    = rf_in + (k_eff - 1) * jump_in
    start_out = start_in + ((k_eff - 1) / 2 - pad_begin) * jump_in

`start` is the centre of the first unit's field; unit i of an axis is centred at
start + i * jump and sees [centre - rf / 2, centre + rf / 2]. Pads and crops are windows of
k = 1 (start moves by -pad_begin * jump). Element-wise ops with several inputs take the
largest field and check that the inputs' jumps and starts agree (a note says when they do
not; inputs broadcast along an axis take part in the size only). An op that mixes all
positions of an axis makes the field of that axis the union of all its units' fields, which
is a window as long as the map, without padding:

    rf_out = rf_in + (n - 1) * jump_in,   start_out = start_in + (n - 1) / 2 * jump_in

(global pooling and spatial reductions, a dense layer on a flattened map, attention over
tokens, normalisations over positions). Every unit of such an axis shares that one field.

Positions are tracked as two digits (y, x), each an axis of the tensor and its place value
within that axis, so that fields follow reshapes, transposes and flattening; a digit that a
reshape splits is no longer tracked, and ops that need positions then report why not.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

from .graph import (
    ONE,
    Concat,
    Dense,
    GraphNode,
    Metadata,
    MixAll,
    Normalize,
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
    product,
    static_value,
)

Role = Literal["global_pool", "position_leak"]


@dataclass(frozen=True)
class Digit:
    """Where an image axis lives in a tensor: `axis`, at place value `place` within it."""

    axis: int
    place: Size


@dataclass(frozen=True)
class AxisField:
    """The field along one image axis: Dang's (rf, jump, start) and the units of that axis."""

    size: float
    jump: float
    start: float
    units: int
    mixed: bool = False  # every unit shares the union of all positions' fields
    digit: Digit | None = None


@dataclass(frozen=True)
class Field:
    """The receptive field of every unit of one tensor; `extras` precede the positions."""

    y: AxisField
    x: AxisField
    extras: int = 0
    note: str | None = None

    @property
    def axes(self) -> tuple[AxisField, AxisField]:
        """(y, x)."""
        return (self.y, self.x)

    def with_axes(
        self, y: AxisField, x: AxisField, *, extras: int | None = None, note: str | None = None
    ) -> Field:
        """A copy with new axis fields (and, when given, new extras or note)."""
        return Field(
            y,
            x,
            self.extras if extras is None else extras,
            self.note if note is None else note,
        )


@dataclass(frozen=True)
class Unknown:
    """No field: `reason` says which op and why."""

    reason: str


State = Field | Unknown | None  # None: the tensor does not depend on the input


@dataclass(frozen=True)
class RoleMark:
    """A node where invariance can appear (global_pool) or position enters (position_leak)."""

    role: Role
    grid: tuple[int, int]  # the map reduced or read, h x w
    detail: str


@dataclass
class FieldAnalysis:
    """The field of every tensor and the roles of the nodes that have one."""

    states: dict[str, State]
    roles: dict[str, RoleMark]


def input_field(*, size: tuple[int, int], layout: str) -> Field:
    """The model input: a field of one pixel, jump 1, first centre at 1/2."""
    dims = (2, 3) if layout == "NCHW" else (1, 2)
    return Field(
        AxisField(1.0, 1.0, 0.5, size[0], digit=Digit(dims[0], ONE)),
        AxisField(1.0, 1.0, 0.5, size[1], digit=Digit(dims[1], ONE)),
    )


def receptive_fields(graph: StaticGraph, *, size: tuple[int, int], layout: str) -> FieldAnalysis:
    """Propagate fields from the input through every node of `graph`, in order."""
    states: dict[str, State] = {graph.input_name: input_field(size=size, layout=layout)}
    roles: dict[str, RoleMark] = {}
    for node in graph.nodes:
        inputs = [states.get(name) if name in graph.activations else None for name in node.inputs]
        unknown = next((s for s in inputs if isinstance(s, Unknown)), None)
        if isinstance(node.op, Metadata):
            states[node.name] = None
        elif unknown is not None:
            states[node.name] = unknown
        elif not any(isinstance(s, Field) for s in inputs):
            states[node.name] = None
        else:
            state, role = _apply(node, inputs, graph)
            states[node.name] = state
            if role is not None:
                roles[node.name] = role
    return FieldAnalysis(states, roles)


def _apply(
    node: GraphNode, inputs: list[State], graph: StaticGraph
) -> tuple[State, RoleMark | None]:
    """The output field of one node whose inputs are known (at least one has a field)."""
    op = node.op
    shapes = [graph.shapes.get(name) for name in node.inputs]
    out = graph.shapes.get(node.name)
    if isinstance(op, Window):
        return _window(node, op, inputs[0], out)
    if isinstance(op, Shift):
        return _shift(node, op, inputs[0], shapes[0], out), None
    if isinstance(op, Pointwise):
        return _pointwise(inputs, shapes, out), None
    if isinstance(op, Permute):
        return _permute(op, inputs[0]), None
    if isinstance(op, Relayout):
        return _relayout(node, inputs[0], shapes[0], out), None
    if isinstance(op, Reduce):
        return _reduce(node, op, inputs[0], shapes[0])
    if isinstance(op, Dense):
        return _dense(node, op, inputs[op.operand], shapes[op.operand], out)
    if isinstance(op, MixAll):
        return _mix_all(node, inputs, shapes, out), None
    if isinstance(op, Normalize):
        return _normalize(node, op, inputs[0], shapes[0]), None
    if isinstance(op, Concat):
        return _concat(node, op, inputs, shapes, out), None
    if isinstance(op, Select):
        return _select(op, inputs[0], shapes[0]), None
    assert isinstance(op, Opaque)
    return Unknown(op.reason), None


def _window(
    node: GraphNode, op: Window, state: State, out: Shape | None
) -> tuple[State, RoleMark | None]:
    """Dang's arithmetic for a convolution or pooling window."""
    if not isinstance(state, Field):
        return state, None
    if (
        state.extras
        or state.y.digit != Digit(op.axes[0], ONE)
        or state.x.digit != Digit(op.axes[1], ONE)
    ):
        return Unknown(
            f"{node.op_type} {node.name}: its axes {op.axes} are not the image's y, x"
        ), None
    known = [static_value(out, axis) for axis in op.axes]
    units = [u for u in known if u is not None]
    if len(units) != 2:
        return Unknown(f"{node.op_type} {node.name}: output shape not known statically"), None
    result = []
    for a, field in enumerate(state.axes):
        k_eff = op.dilation[a] * (op.kernel[a] - 1) + 1
        covers = units[a] == 1 and k_eff >= field.units
        if field.mixed:
            result.append(replace(field, jump=field.jump * op.stride[a], units=units[a]))
            continue
        result.append(
            replace(
                field,
                size=field.size + (k_eff - 1) * field.jump,
                start=field.start + ((k_eff - 1) / 2 - op.pad_begin[a]) * field.jump,
                jump=field.jump * op.stride[a],
                units=units[a],
                mixed=covers and field.units > 1,
            )
        )
    grid = (state.y.units, state.x.units)
    role = None
    if units == [1, 1] and grid != (1, 1) and all(f.mixed for f in result):
        role = (
            RoleMark(
                "position_leak",
                grid,
                f"convolution whose window covers the whole {grid[0]}x{grid[1]} map",
            )
            if op.weighted
            else RoleMark("global_pool", grid, f"pooling over the whole {grid[0]}x{grid[1]} map")
        )
    return state.with_axes(result[0], result[1]), role


def _exact_axis(state: Field, axis: int, shape: Shape | None) -> int | None:
    """The image axis (0: y, 1: x) that is tensor `axis` alone, if one is."""
    extent = static_value(shape, axis)
    for a, field in enumerate(state.axes):
        if field.digit == Digit(axis, ONE) and extent == field.units:
            return a
    return None


def _on_axis(state: Field, axis: int) -> list[int]:
    """The image axes whose digit lies in tensor `axis`."""
    return [a for a, f in enumerate(state.axes) if f.digit is not None and f.digit.axis == axis]


def _shift(
    node: GraphNode, op: Shift, state: State, shape: Shape | None, out: Shape | None
) -> State:
    """Pad / crop / subsample along single tensor axes: start moves by -begin * jump."""
    if not isinstance(state, Field):
        return state
    rank = len(shape) if shape is not None else 0
    axes = list(state.axes)
    extras = state.extras
    steps = {axis % rank if rank else axis: step for axis, step in op.step}
    begins = {axis % rank if rank else axis: begin for axis, begin in op.begin}
    for axis in sorted(set(steps) | set(begins)):
        begin, step = begins.get(axis, 0), steps.get(axis, 1)
        if begin == 0 and step == 1:
            continue
        image_axis = _exact_axis(state, axis, shape)
        if image_axis is None:
            if not _on_axis(state, axis):
                continue  # channels padded or sliced: positions untouched
            if begin == -extras and step == 1:
                extras = 0  # the class tokens dropped, patches kept
                continue
            return Unknown(f"{node.op_type} {node.name}: pads or crops a flattened axis")
        units = static_value(out, axis)
        if units is None:
            return Unknown(f"{node.op_type} {node.name}: output shape not known statically")
        field = axes[image_axis]
        start = field.start if field.mixed else field.start - begin * field.jump
        axes[image_axis] = replace(field, start=start, jump=field.jump * step, units=units)
    return state.with_axes(axes[0], axes[1], extras=extras)


def _aligned(state: Field, rank: int, out_rank: int) -> Field:
    """`state` with its digits renumbered for a broadcast to `out_rank` axes."""
    offset = out_rank - rank
    if offset == 0:
        return state
    axes = [
        replace(f, digit=None if f.digit is None else Digit(f.digit.axis + offset, f.digit.place))
        for f in state.axes
    ]
    return state.with_axes(axes[0], axes[1])


def _pointwise(inputs: Sequence[State], shapes: Sequence[Shape | None], out: Shape | None) -> State:
    """The largest field of the inputs; jumps and starts of same-grid inputs must agree."""
    out_rank = len(out) if out is not None else 0
    fields = [
        _aligned(s, len(shape) if shape is not None else out_rank, out_rank)
        for s, shape in zip(inputs, shapes, strict=True)
        if isinstance(s, Field)
    ]
    return merge_fields(fields)


def merge_fields(fields: Sequence[Field]) -> Field:
    """Element-wise: the largest field per axis, positions from the input with most units."""
    main = max(fields, key=lambda f: f.y.units * f.x.units)
    notes = [f.note for f in fields if f.note]
    axes = []
    for a in (0, 1):
        own = main.axes[a]
        mixed = [f.axes[a] for f in fields if f.axes[a].mixed]
        if mixed and not own.mixed:
            widest = max(mixed, key=lambda f: f.size)
            axes.append(replace(own, size=widest.size, start=widest.start, mixed=True))
            continue
        for other in fields:
            theirs = other.axes[a]
            if theirs.mixed or theirs.units != own.units or own.mixed:
                continue
            if (theirs.jump, theirs.start) != (own.jump, own.start):
                notes.append(
                    f"inputs disagree on axis {'yx'[a]}: jump {own.jump:g} start {own.start:g} "
                    f"vs jump {theirs.jump:g} start {theirs.start:g}"
                )
        axes.append(replace(own, size=max(f.axes[a].size for f in fields)))
    return main.with_axes(axes[0], axes[1], note="; ".join(dict.fromkeys(notes)) or None)


def _permute(op: Permute, state: State) -> State:
    """Transpose: each digit follows its axis."""
    if not isinstance(state, Field):
        return state
    axes = [
        replace(
            f, digit=None if f.digit is None else Digit(op.perm.index(f.digit.axis), f.digit.place)
        )
        for f in state.axes
    ]
    return state.with_axes(axes[0], axes[1])


def _relocate(digit: Digit, units: int, shape: Shape, out: Shape) -> Digit | None:
    """Where a digit of `shape` lands after a row-major reshape to `out`; None if split."""
    inner = product(shape[digit.axis + 1 :])
    if inner is None:
        return None
    place = digit.place * inner  # its place value in the flat index
    span = place * Size(units)
    for axis in range(len(out)):
        inner_out = product(out[axis + 1 :])
        outer = product(out[axis:])
        if inner_out is None or outer is None:
            continue
        if inner_out.divides(place) and span.divides(outer):
            return Digit(axis, place // inner_out)
    return None


def _relayout(node: GraphNode, state: State, shape: Shape | None, out: Shape | None) -> State:
    """Reshape-like ops: the same units, so the same fields; the digits are relocated."""
    if not isinstance(state, Field):
        return state
    axes = []
    for field in state.axes:
        digit = field.digit
        if digit is not None and shape is not None and out is not None:
            digit = _relocate(digit, field.units, shape, out)
        else:
            digit = None
        axes.append(replace(field, digit=digit))
    extras = state.extras
    if extras and any(
        a.digit is None
        or b.digit is None
        or static_value(shape, b.digit.axis) != static_value(out, a.digit.axis)
        for a, b in zip(axes, state.axes, strict=True)
    ):
        axes = [replace(f, digit=None) for f in axes]
    return state.with_axes(axes[0], axes[1])


def _union(field: AxisField, *, keep_units: bool) -> AxisField:
    """The union of all units' fields along an axis: a window as long as the axis, no padding."""
    if field.mixed:
        return field if keep_units else replace(field, units=1, digit=None)
    n = field.units
    size = field.size + (n - 1) * field.jump
    start = field.start + (n - 1) / 2 * field.jump
    if keep_units:
        return replace(field, size=size, start=start, mixed=True)
    return replace(
        field, size=size, start=start, jump=field.jump * n, units=1, mixed=True, digit=None
    )


def _untracked(node: GraphNode, state: Field) -> Unknown | None:
    """A reason when some positions are neither tracked nor already mixed."""
    if any(f.digit is None and not f.mixed and f.units > 1 for f in state.axes):
        return Unknown(f"{node.op_type} {node.name}: cannot tell which axis holds the positions")
    return None


def _drop_axes(field: AxisField, dropped: Sequence[int]) -> AxisField:
    """Renumber a digit after the tensor axes `dropped` disappear."""
    if field.digit is None:
        return field
    shift = sum(1 for axis in dropped if axis < field.digit.axis)
    return replace(field, digit=Digit(field.digit.axis - shift, field.digit.place))


def _reduce(
    node: GraphNode, op: Reduce, state: State, shape: Shape | None
) -> tuple[State, RoleMark | None]:
    """A reduction: the reduced image axes become the union; all of them: a global pool."""
    if not isinstance(state, Field):
        return state, None
    untracked = _untracked(node, state)
    if untracked is not None:
        return untracked, None
    rank = len(shape) if shape is not None else 0
    reduced = sorted({axis % rank for axis in op.axes}) if rank else list(op.axes)
    axes = []
    hit = []
    for a, field in enumerate(state.axes):
        if field.digit is not None and field.digit.axis in reduced:
            hit.append(a)
            axes.append(_union(field, keep_units=False))
        else:
            axes.append(field if op.keepdims else _drop_axes(field, reduced))
    grid = (state.y.units, state.x.units)
    spread = [a for a in (0, 1) if grid[a] > 1]
    role = None
    if spread and all(a in hit for a in spread):
        role = RoleMark("global_pool", grid, f"reduction over the whole {grid[0]}x{grid[1]} map")
    extras = state.extras if not hit else 0
    return state.with_axes(axes[0], axes[1], extras=extras), role


def _dense(
    node: GraphNode, op: Dense, state: State, shape: Shape | None, out: Shape | None
) -> tuple[State, RoleMark | None]:
    """A dense layer: contracting a positional axis unions it, and lets position in."""
    if not isinstance(state, Field):
        return state, None
    rank = len(shape) if shape is not None else 0
    axis = op.axis % rank if rank else op.axis
    untracked = _untracked(node, state)
    if untracked is not None:
        if all(f.mixed or f.units == 1 for f in state.axes):
            return state, None
        return untracked, None
    same_rank = out is not None and len(out) == rank
    axes = []
    read = []
    for a, field in enumerate(state.axes):
        if field.digit is not None and field.digit.axis == axis:
            if field.units > 1 and not field.mixed:
                read.append(a)
            axes.append(_union(field, keep_units=False))
        else:
            axes.append(field if same_rank else replace(field, digit=None))
    grid = (state.y.units, state.x.units)
    role = None
    if read:
        role = RoleMark("position_leak", grid, f"dense layer on a {grid[0]}x{grid[1]} map")
    return state.with_axes(axes[0], axes[1], extras=0 if read else state.extras), role


def _mix_all(
    node: GraphNode, inputs: Sequence[State], shapes: Sequence[Shape | None], out: Shape | None
) -> State:
    """Attention: every unit reads every position of every input; positions of a same-shape
    input are kept."""
    fields = [s for s in inputs if isinstance(s, Field)]
    for field in fields:
        untracked = _untracked(node, field)
        if untracked is not None:
            return untracked
    unions = [Field(_union(f.y, keep_units=False), _union(f.x, keep_units=False)) for f in fields]
    keeper = next(
        (
            s
            for s, shape in zip(inputs, shapes, strict=True)
            if isinstance(s, Field) and shape == out
        ),
        None,
    )
    axes = []
    for a in (0, 1):
        widest = max((u.axes[a] for u in unions), key=lambda f: f.size)
        if keeper is not None:
            own = keeper.axes[a]
            axes.append(replace(own, size=widest.size, start=widest.start, mixed=True))
        else:
            axes.append(widest)
    base = keeper if keeper is not None else fields[0]
    return base.with_axes(axes[0], axes[1], extras=keeper.extras if keeper is not None else 0)


def _normalize(node: GraphNode, op: Normalize, state: State, shape: Shape | None) -> State:
    """Statistics over positional axes: each unit then depends on all positions of them."""
    if not isinstance(state, Field):
        return state
    rank = len(shape) if shape is not None else 0
    over = {axis % rank for axis in op.axes} if rank else set(op.axes)
    axes = [
        _union(f, keep_units=True) if f.digit is not None and f.digit.axis in over else f
        for f in state.axes
    ]
    if any(f.digit is None and not f.mixed and f.units > 1 for f in state.axes):
        return Unknown(f"{node.op_type} {node.name}: cannot tell which axis holds the positions")
    return state.with_axes(axes[0], axes[1])


def _concat(
    node: GraphNode,
    op: Concat,
    inputs: Sequence[State],
    shapes: Sequence[Shape | None],
    out: Shape | None,
) -> State:
    """Along a positional axis: padding around the largest input (how exporters build
    circular pads) or class tokens before the patches; along channels: element-wise."""
    rank = len(out) if out is not None else 0
    axis = op.axis % rank if rank else op.axis
    fields = [(i, s) for i, s in enumerate(inputs) if isinstance(s, Field)]
    extents = [static_value(shape, axis) for shape in shapes]
    main_index, main = max(fields, key=lambda pair: extents[pair[0]] or 0)
    image_axis = _exact_axis(main, axis, shapes[main_index])
    before = extents[:main_index]
    if image_axis is not None or _on_axis(main, axis):
        if any(e is None for e in before):
            return Unknown(f"{node.op_type} {node.name}: input extents not known statically")
        begin = sum(e for e in before if e is not None)
        if image_axis is None:
            return replace(main, extras=main.extras + begin)
        return _shift(node, Shift(((axis, begin),)), main, shapes[main_index], out)
    return merge_fields([s for _, s in fields])


def _select(op: Select, state: State, shape: Shape | None) -> State:
    """One index of an axis: a single position (or token) when the axis is positional."""
    if not isinstance(state, Field):
        return state
    rank = len(shape) if shape is not None else 0
    axis = op.axis % rank if rank else op.axis
    index = op.index % (static_value(shape, axis) or 1) if op.index < 0 else op.index
    image_axis = _exact_axis(state, axis, shape)
    axes = list(state.axes)
    if image_axis is not None:
        field = axes[image_axis]
        start = field.start if field.mixed else field.start + index * field.jump
        axes[image_axis] = replace(field, start=start, units=1, digit=None)
    elif _on_axis(state, axis):
        if index < state.extras:  # a class token
            if not all(f.mixed or f.units == 1 for f in state.axes):
                return None  # it has read no position yet
            axes = [replace(f, units=1, digit=None) for f in axes]
        else:
            row, col = divmod(index - state.extras, state.x.units)
            axes = [
                replace(f, start=f.start if f.mixed else f.start + k * f.jump, units=1, digit=None)
                for f, k in zip(axes, (row, col), strict=True)
            ]
        return state.with_axes(axes[0], axes[1], extras=0)
    axes = [_drop_axes(f, [axis]) for f in axes]
    return state.with_axes(axes[0], axes[1])


def border_fractions(field: Field, *, size: tuple[int, int]) -> tuple[float, float, float]:
    """Shares of units whose field reaches past the image: along y, along x, and over the grid.

    Unit i of an axis sees [start + i jump - rf / 2, start + i jump + rf / 2]; it reaches
    past the image when that leaves [0, side]. Units that share one field (a mixed axis)
    all reach past, or none does.
    """
    shares = []
    for axis, side in zip(field.axes, size, strict=True):
        half = axis.size / 2
        if axis.mixed or axis.units <= 1:
            past = axis.start - half < 0 or axis.start + half > side
            shares.append(1.0 if past else 0.0)
            continue
        past_count = sum(
            1
            for i in range(axis.units)
            if axis.start + i * axis.jump - half < 0 or axis.start + i * axis.jump + half > side
        )
        shares.append(past_count / axis.units)
    inner = (1 - shares[0]) * (1 - shares[1])
    return shares[0], shares[1], 1 - inner
