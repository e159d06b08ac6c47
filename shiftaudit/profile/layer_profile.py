"""The layer profile of report 1.2: per-layer errors, receptive fields, roles and findings.

For every intermediate map or token grid of the model (science.md, report 1.2):
`on_grid_error` and `off_grid_error` on the deployed network, `aliasing_error` on its torus
variant, `local_aliasing` of each node run alone on the torus variant; and for every node the
static receptive field and its role. Input shifts are circular rolls of the preprocessed
probes; the profile uses the first `layers.probes` of them.

Cost, counted in model-forward equivalents (one forward pass of the whole model on one probe),
for P probes and S distinct strides among the spatial layers:

- deployed network: 1 reference pass, then one pass per shift of the union of the on-grid
  sets {(j, 0), (0, j), (j, j)} of every stride j and the off-grid set {(1, 0), (0, 1),
  (1, 1)}: at most 3 S + 3 (3 S when a stride is 1, whose on-grid set is the off-grid one);
- torus variant: 1 reference pass, and 3 off-grid passes unless the rewrite changed nothing
  (a network that pads circularly is its own torus variant);
- local aliasing: 1 + 3 runs in which every profiled node runs once, on its own inputs: each
  at most one forward pass.

In all at most P (12 + 3 S) (`shiftaudit.cost.layer_profile_forward_passes`); without graph access
(TorchScript) at most P (4 + 3 S). Each pass also keeps every intermediate output; a
fractional comparison costs one forward real FFT of the shifted output (by Parseval, against
the reference's spectrum, taken once for its three shifts: about as much memory as the
tensor), and each shifted input of a local run one inverse.

How it runs (`parallel.py`): on a CPU, torch at one intra-op thread, the comparisons of one
step (one per layer) and the shifted inputs of a local run (one per tensor) side by side on
worker threads, and each model run (deployed, torus, local) during the comparisons of the
previous one. The numbers are those of the plain, one-at-a-time computation (to the rounding
of float32 arithmetic on one thread instead of several, tests/test_profile_parallel.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch

from ..report import LayerEntry, LayerProfile, ReceptiveField, TorusVariant
from ..runtimes import Runtime
from .access import TORCHSCRIPT, Graph, open_graph
from .equivariance import (
    OFF_GRID,
    ErrorSamples,
    on_grid_shifts,
    output_shift,
    shift_errors,
)
from .findings import layer_findings
from .geometry import NON_SPATIAL as NON_SPATIAL_GEOMETRY
from .geometry import Geometry, geometry_of
from .graph import Concat, Shape, Shift, StaticGraph
from .ideal_shift import IdealShifter
from .parallel import Tasks, in_callers_modes, profile_tasks
from .receptive_fields import (
    Field,
    FieldAnalysis,
    RoleMark,
    Unknown,
    border_fractions,
    receptive_fields,
)

NON_SPATIAL = "non-spatial output: no grid to shift"
ZERO_OUTPUT = "the output is zero on every probe"
NO_SPATIAL_INPUT = "no spatial input: nothing to shift"
INTEGER_INPUT = (
    "it reads integer values on a grid ({}, e.g. pooling indices), which no ideal shift moves"
)


@dataclass
class _Measured:
    """Per-layer error samples by kind (on_grid, cosine, off_grid, aliasing, local), and why
    a field has none."""

    samples: dict[str, dict[str, ErrorSamples]] = field(
        default_factory=lambda: {
            k: {} for k in ("on_grid", "cosine", "off_grid", "aliasing", "local")
        }
    )
    reasons: dict[str, dict[str, str]] = field(default_factory=dict)
    passes: int = 0

    def add(self, kind: str, name: str, values: torch.Tensor) -> None:
        """Record per-probe values of one kind for one layer."""
        self.samples[kind].setdefault(name, ErrorSamples()).add(values)

    def mean(self, kind: str, name: str) -> float | None:
        """The mean of one kind for one layer; None when nothing was measured."""
        found = self.samples[kind].get(name)
        return found.mean() if found is not None else None

    def why(self, name: str, field_name: str, reason: str) -> None:
        """Record why `field_name` of layer `name` is null (the first reason wins)."""
        self.reasons.setdefault(name, {}).setdefault(field_name, reason)


def layer_profile(
    model: Runtime, inputs: torch.Tensor, *, layout: str, size: tuple[int, int]
) -> LayerProfile:
    """Profile every intermediate output of `model` on `inputs` (preprocessed, model layout)."""
    count = int(inputs.shape[0])
    if model.layers_unavailable_reason is not None:
        return LayerProfile(
            available=False, reason=model.layers_unavailable_reason, probes=count, entries=[]
        )
    with profile_tasks(model.device) as tasks:
        return _profile(model, inputs, layout=layout, size=size, tasks=tasks)


def _profile(
    model: Runtime, inputs: torch.Tensor, *, layout: str, size: tuple[int, int], tasks: Tasks
) -> LayerProfile:
    count = int(inputs.shape[0])
    dims = (2, 3) if layout == "NCHW" else (1, 2)
    measured = _Measured()
    graph, graph_reason = open_graph(model, threads=tasks.run_threads)
    deployed = _deployed(model, graph, inputs)
    measured.passes += 1
    values = deployed.reference
    geometries = {
        name: geometry_of(value.shape, size=size, layout=layout) for name, value in values.items()
    }
    _deployed_errors(deployed, inputs, geometries, measured, dims=dims, tasks=tasks)
    analysis = None
    torus = TorusVariant(available=False, reason=graph_reason, rewritten=[], refused={})
    if graph is not None:
        analysis = receptive_fields(graph.static, size=size, layout=layout)
        torus = _torus_errors(
            graph,
            analysis,
            inputs,
            geometries,
            measured,
            dims=dims,
            layout=layout,
            size=size,
            tasks=tasks,
        )
    else:
        for name in values:
            for field_name in ("aliasing_error", "local_aliasing", "receptive_field"):
                measured.why(name, field_name, graph_reason or TORCHSCRIPT)
    entries = _entries(
        reference=deployed.layers,
        values=values,
        geometries=geometries,
        measured=measured,
        graph=graph,
        analysis=analysis,
        count=count,
        size=size,
        layout=layout,
    )
    roles = analysis.roles if analysis is not None else {}
    return LayerProfile(
        available=True,
        reason=None if graph is not None else f"partial: {graph_reason}",
        probes=count,
        entries=entries,
        off_grid_shifts=list(OFF_GRID),
        torus=torus,
        forward_passes=measured.passes * count,
        findings=layer_findings(entries, roles=roles, size=size),
    )


@dataclass
class _Deployed:
    """The deployed network's intermediate outputs (and those of the unshifted inputs)."""

    layers: list[tuple[str, str]]  # (name, op type), in graph order
    reference: dict[str, torch.Tensor]
    run: Callable[[torch.Tensor], dict[str, torch.Tensor]]


def _deployed(model: Runtime, graph: Graph | None, inputs: torch.Tensor) -> _Deployed:
    """The deployed network, run through the profile's own view of the graph where there is
    one (ONNX, torch.export: the same float graph, in ONNX sessions whose threads do not spin
    while torch works between runs), else through the runtime's `forward_with_layers`."""
    if graph is not None:
        names = graph.layer_names()
        op_types = {node.name: node.op_type for node in graph.static.nodes}

        def run_graph(x: torch.Tensor) -> dict[str, torch.Tensor]:
            values = graph.run(x, torus=False, keep=set(names))
            return {name: _floating(values[name]) for name in names}

        layers = [(name, op_types[name]) for name in names]
        return _Deployed(layers, run_graph(inputs), run_graph)

    def run_runtime(x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {layer.name: layer.value for layer in model.forward_with_layers(x)[1]}

    _, recorded = model.forward_with_layers(inputs)
    layers = [(layer.name, layer.op_type) for layer in recorded]
    return _Deployed(layers, {layer.name: layer.value for layer in recorded}, run_runtime)


def _prefetched(
    run: Callable[[tuple[int, int]], dict[str, Any]], shifts: Sequence[tuple[int, int]]
) -> Iterator[dict[str, Any]]:
    """run(t) for each shift in order, the run of the next shift going on in a worker thread
    while the caller compares the current one (two runs' outputs are then held at once).

    ONNX Runtime and torch release the GIL while they compute, so the model's run and the
    comparisons share the cores, each on its own threads; the run keeps the caller's
    inference mode and autocast (`in_callers_modes`), which are a thread's own."""
    run = in_callers_modes(run)
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = [pool.submit(run, t) for t in shifts[:1]]
        for i in range(len(shifts)):
            result = pending.pop().result()
            if i + 1 < len(shifts):
                pending.append(pool.submit(run, shifts[i + 1]))
            yield result


def _floating(value: torch.Tensor) -> torch.Tensor:
    """As float32, as `forward_with_layers` records every layer (pooling indices included)."""
    return value.float()


def _deployed_errors(
    deployed: _Deployed,
    inputs: torch.Tensor,
    geometries: Mapping[str, Geometry],
    measured: _Measured,
    *,
    dims: tuple[int, int],
    tasks: Tasks,
) -> None:
    """on_grid_error (and cosine) and off_grid_error on the deployed network, the layers of
    one shift compared side by side (`tasks`)."""
    strides = sorted({g.stride for g in geometries.values() if g.stride is not None})
    on_grid = {stride: on_grid_shifts(stride) for stride in strides}
    shifts = list(
        dict.fromkeys([t for stride in strides for t in on_grid[stride]] + list(OFF_GRID))
    )
    references = {
        name: IdealShifter(value, geometries[name])
        for name, value in deployed.reference.items()
        if geometries[name].spatial
    }
    if not references:
        return  # nothing to shift: no pass is spent
    runs = _prefetched(
        lambda t: deployed.run(torch.roll(inputs, t, dims=dims)),
        shifts,
    )
    for t, shifted in zip(shifts, runs, strict=True):
        measured.passes += 1

        def kinds(name: str, t: tuple[int, int] = t) -> tuple[bool, bool]:
            stride = references[name].geometry.stride
            assert stride is not None
            return t in on_grid[stride], t in OFF_GRID

        names = [name for name in references if any(kinds(name))]

        def compare(
            name: str, t: tuple[int, int] = t, shifted: Mapping[str, Any] = shifted
        ) -> tuple[torch.Tensor, torch.Tensor | None]:
            return shift_errors(
                shifted=shifted[name], reference=references[name], t=t, with_cosine=kinds(name)[0]
            )

        for name, (errors, cosine) in zip(names, tasks.map(compare, names), strict=True):
            on, off = kinds(name)
            if on and cosine is not None:
                measured.add("on_grid", name, errors)
                measured.add("cosine", name, cosine)
            if off:
                measured.add("off_grid", name, errors)


def _tainted(static: StaticGraph, refused: Mapping[str, str]) -> dict[str, str]:
    """Every node at or after a node the torus rewrite refused, with that refusal."""
    taint: dict[str, str] = {}
    for node in static.nodes:
        if node.name in refused:
            taint[node.name] = refused[node.name]
            continue
        upstream = next((taint[i] for i in node.inputs if i in taint), None)
        if upstream is not None:
            taint[node.name] = f"upstream: {upstream}"
    return taint


def _torus_errors(
    graph: Graph,
    analysis: FieldAnalysis,
    inputs: torch.Tensor,
    geometries: Mapping[str, Geometry],
    measured: _Measured,
    *,
    dims: tuple[int, int],
    layout: str,
    size: tuple[int, int],
    tasks: Tasks,
) -> TorusVariant:
    """aliasing_error and local_aliasing, on the torus variant."""
    graph.prepare_torus(analysis)
    taint = _tainted(graph.static, graph.refused)
    nodes = {node.name for node in graph.static.nodes}
    for name, reason in taint.items():
        measured.why(name, "aliasing_error", reason)
        measured.why(name, "local_aliasing", reason)
    clean = [name for name, g in geometries.items() if g.spatial and name not in taint]
    for name in clean:
        if name not in nodes:
            measured.why(name, "local_aliasing", "not a node of the graph")
    cones = {
        name: _cone(name, graph.static, size=size, layout=layout) for name in clean if name in nodes
    }
    summary = TorusVariant(
        available=True, reason=None, rewritten=list(graph.rewritten), refused=dict(graph.refused)
    )
    try:
        keep = set(clean) | {i for cone in cones.values() for i in graph.inputs_of(cone)}
        base = graph.run(inputs, torus=True, keep=keep)
        measured.passes += 1
        # The spectra of the torus variant's maps, taken once: the references of
        # aliasing_error are the inputs of the local runs.
        spectra: dict[str, IdealShifter] = {}
        _aliasing(
            graph,
            base,
            inputs,
            clean,
            geometries,
            measured,
            dims=dims,
            tasks=tasks,
            spectra=spectra,
        )
        _local_aliasing(
            graph,
            base,
            cones,
            geometries,
            measured,
            layout=layout,
            size=size,
            tasks=tasks,
            spectra=spectra,
        )
    except Exception as exc:
        reason = f"the torus variant failed to run: {type(exc).__name__}: {exc}"
        for name in clean:
            measured.why(name, "aliasing_error", reason)
            measured.why(name, "local_aliasing", reason)
        return summary.model_copy(update={"available": False, "reason": reason})
    return summary


def _cone(name: str, static: StaticGraph, *, size: tuple[int, int], layout: str) -> list[str]:
    """`name` and the padding nodes (pads, crops, concatenations) that feed it padded maps.

    A padded map (h + 2p on a side) is not a grid of the layer's stride and cannot be shifted
    ideally; the op that pads runs with the op that reads the padded map, from the map before
    it, as the two are one padded op.
    """
    nodes = {node.name: node for node in static.nodes}
    order = {node.name: i for i, node in enumerate(static.nodes)}
    cone, frontier = {name}, [name]
    while frontier:
        for tensor in nodes[frontier.pop()].inputs:
            producer = nodes.get(tensor)
            if (
                producer is None
                or tensor in cone
                or tensor not in static.activations
                or not isinstance(producer.op, Shift | Concat)
            ):
                continue
            extents = _static_extents(static.shapes.get(tensor), batch=1)
            if extents is None or len(extents) < 3:
                continue
            if geometry_of(extents, size=size, layout=layout).spatial:
                continue  # a grid already: shifted as it is
            cone.add(tensor)
            frontier.append(tensor)
    return sorted(cone, key=order.__getitem__)


def _aliasing(
    graph: Graph,
    base: Mapping[str, Any],
    inputs: torch.Tensor,
    names: Sequence[str],
    geometries: Mapping[str, Geometry],
    measured: _Measured,
    *,
    dims: tuple[int, int],
    tasks: Tasks,
    spectra: dict[str, IdealShifter],
) -> None:
    """aliasing_error: the off-grid error of the torus variant (the deployed one's when the
    rewrite changed nothing: the network is then its own torus variant). The references'
    shifters go into `spectra`, keyed by tensor."""
    if not graph.rewritten:
        for name in names:
            if name in measured.samples["off_grid"]:
                measured.samples["aliasing"][name] = measured.samples["off_grid"][name]
        return
    references = {name: _shifter(spectra, base, name, geometries[name]) for name in names}
    runs = _prefetched(
        lambda t: graph.run(torch.roll(inputs, t, dims=dims), torus=True, keep=set(names)),
        OFF_GRID,
    )
    _add_off_grid_errors(measured, "aliasing", names, references, runs, tasks=tasks)


def _shifter(
    spectra: dict[str, IdealShifter], base: Mapping[str, Any], tensor: str, geometry: Geometry
) -> IdealShifter:
    """The shifter of `base[tensor]` in `spectra` (made there on first use), so that its
    spectrum is taken once however many comparisons and local runs read it."""
    found = spectra.get(tensor)
    if found is None or found.geometry != geometry:
        found = spectra[tensor] = IdealShifter(base[tensor], geometry)
    return found


def _local_aliasing(
    graph: Graph,
    base: Mapping[str, Any],
    cones: Mapping[str, Sequence[str]],
    geometries: Mapping[str, Geometry],
    measured: _Measured,
    *,
    layout: str,
    size: tuple[int, int],
    tasks: Tasks,
    spectra: dict[str, IdealShifter],
) -> None:
    """local_aliasing: ||f(T_{t/j_1} h_1, ...) - T_{t/j} f(h_1, ...)|| / ||f(h_1, ...)||.

    The shifted inputs T_{t/j_k} h_k of one t are made side by side (`tasks`), from the
    spectra in `spectra` (those of aliasing_error's references, where they are the same
    tensors), and so are the comparisons of the nodes' outputs."""
    activations = graph.static.activations
    outside = {name: graph.inputs_of(cone) for name, cone in cones.items()}

    def input_geometry(tensor: str) -> Geometry | None:
        value = base.get(tensor)
        if tensor not in activations or not isinstance(value, torch.Tensor):
            return None  # weights, constants and sizes pass unchanged
        geometry = geometry_of(value.shape, size=size, layout=layout)
        return geometry if geometry.spatial else None

    reads = {name: [input_geometry(t) for t in outside[name]] for name in cones}
    runnable = []
    for name in cones:
        integer = [
            t
            for t, g in zip(outside[name], reads[name], strict=True)
            if g is not None and not base[t].is_floating_point()
        ]
        if integer:
            measured.why(name, "local_aliasing", INTEGER_INPUT.format(integer[0]))
        elif any(g is not None for g in reads[name]):
            runnable.append(name)
        else:
            measured.why(name, "local_aliasing", NO_SPATIAL_INPUT)
    if not runnable:
        return
    values = {name: [base[t] for t in outside[name]] for name in runnable}
    alone = graph.run_alone({name: (cones[name], values[name]) for name in runnable})
    measured.passes += 1
    references = {name: IdealShifter(alone[name], geometries[name]) for name in runnable}
    pairs = {name: list(zip(outside[name], reads[name], strict=True)) for name in runnable}
    # Shifters made here, in order, before any thread reads them.
    for inputs in pairs.values():
        for tensor, geometry in inputs:
            if geometry is not None and geometry.stride is not None:
                _shifter(spectra, base, tensor, geometry)

    def run(t: tuple[int, int]) -> dict[str, torch.Tensor]:
        moved = _moved_inputs(base, pairs, t, spectra, tasks=tasks)
        return graph.run_alone({name: (cones[name], moved[name]) for name in runnable})

    # The inputs of the next t are shifted and run while the outputs of this one are compared.
    runs = _prefetched(run, OFF_GRID)
    _add_off_grid_errors(measured, "local", runnable, references, runs, tasks=tasks)


def _add_off_grid_errors(
    measured: _Measured,
    kind: str,
    names: Sequence[str],
    references: Mapping[str, IdealShifter],
    runs: Iterator[Mapping[str, Any]],
    *,
    tasks: Tasks,
) -> None:
    """Per off-grid t (one run of `runs` each): the error of each `names` output against
    T_t of its reference (`shift_errors`: ||f_t - T_{t/j} f|| / ||f||), compared side by side
    on `tasks`."""
    for t, outputs in zip(OFF_GRID, runs, strict=True):
        measured.passes += 1

        def compare(
            name: str, t: tuple[int, int] = t, outputs: Mapping[str, Any] = outputs
        ) -> torch.Tensor:
            return shift_errors(shifted=outputs[name], reference=references[name], t=t)[0]

        for name, errors in zip(names, tasks.map(compare, names), strict=True):
            measured.add(kind, name, errors)


def _moved_inputs(
    base: Mapping[str, Any],
    reads: Mapping[str, Sequence[tuple[str, Geometry | None]]],
    t: tuple[int, int],
    shifters: dict[str, IdealShifter],
    *,
    tasks: Tasks,
) -> dict[str, list[Any]]:
    """T_{t/j_k} h_k for every spatial input h_k of every node, at the input's own stride;
    weights, constants, sizes and non-spatial inputs unchanged. A tensor that several nodes
    read is shifted once (the tensors side by side, on `tasks`); `shifters` keeps its
    spectrum for the next t."""
    moving: dict[str, Geometry] = {}
    for inputs in reads.values():
        for tensor, geometry in inputs:
            if geometry is not None and geometry.stride is not None:
                moving.setdefault(tensor, geometry)
    # Made here, in order, so that no two tasks make the same shifter.
    for tensor, geometry in moving.items():
        _shifter(shifters, base, tensor, geometry)

    def move(tensor: str) -> torch.Tensor:
        stride = moving[tensor].stride
        assert stride is not None
        return shifters[tensor](output_shift(t, stride))

    shifted = dict(zip(moving, tasks.map(move, list(moving)), strict=True))
    return {
        name: [shifted.get(tensor, base[tensor]) for tensor, _ in inputs]
        for name, inputs in reads.items()
    }


def _static_extents(shape: Shape | None, *, batch: int) -> list[int] | None:
    """A static shape as integers, the leading (batch) axis set to `batch`; None if unknown."""
    if not shape:
        return None
    rest = [d.value if d is not None else None for d in shape[1:]]
    if any(e is None for e in rest):
        return None
    return [batch, *(int(e or 0) for e in rest)]


def _receptive_field(state: Field, *, size: tuple[int, int]) -> ReceptiveField:
    by, bx, both = border_fractions(state, size=size)
    return ReceptiveField(
        size=(state.y.size, state.x.size),
        jump=(state.y.jump, state.x.jump),
        start=(state.y.start, state.x.start),
        input_fraction=(state.y.size / size[0], state.x.size / size[1]),
        border_fraction=both,
        border_fraction_axes=(by, bx),
        mixes_all_positions=state.y.mixed and state.x.mixed,
        note=state.note,
    )


def _entries(
    *,
    reference: Sequence[tuple[str, str]],
    values: Mapping[str, torch.Tensor],
    geometries: Mapping[str, Geometry],
    measured: _Measured,
    graph: Graph | None,
    analysis: FieldAnalysis | None,
    count: int,
    size: tuple[int, int],
    layout: str,
) -> list[LayerEntry]:
    """One entry per intermediate map (and per node with a role), in graph order."""
    op_types = dict(reference)
    roles: Mapping[str, RoleMark] = analysis.roles if analysis is not None else {}
    order = [name for name, _ in reference]
    if graph is not None:
        listed = set(order) | set(roles)
        static_order = [node.name for node in graph.static.nodes if node.name in listed]
        order = static_order + [name for name in order if name not in set(static_order)]
        op_types |= {
            node.name: node.op_type
            for node in graph.static.nodes
            if node.name in roles and node.name not in op_types
        }
    entries = []
    for position, name in enumerate(order):
        geometry = geometries.get(name)
        if geometry is None:
            static = graph.static.shapes.get(name) if graph is not None else None
            dims = _static_extents(static, batch=count) or []
            geometry = geometry_of(dims, size=size, layout=layout) if dims else NON_SPATIAL_GEOMETRY
        else:
            dims = list(values[name].shape)
        entries.append(
            _entry(
                name=name,
                op_type=op_types[name],
                shape=dims,
                geometry=geometry,
                measured=measured,
                state=analysis.states.get(name) if analysis is not None else None,
                role=roles.get(name),
                head=not any(
                    geometries.get(later) is not None and geometries[later].spatial
                    for later in order[position + 1 :]
                ),
                has_analysis=analysis is not None,
                size=size,
            )
        )
    return entries


def _entry(
    *,
    name: str,
    op_type: str,
    shape: list[int],
    geometry: Geometry,
    measured: _Measured,
    state: Field | Unknown | None,
    role: RoleMark | None,
    head: bool,
    has_analysis: bool,
    size: tuple[int, int],
) -> LayerEntry:
    """The entry of one layer, every null field with its reason."""
    if not geometry.spatial:
        for field_name in ("on_grid_error", "off_grid_error", "aliasing_error", "local_aliasing"):
            measured.why(name, field_name, NON_SPATIAL)
    on_grid = measured.samples["on_grid"].get(name, ErrorSamples())
    values = {
        "on_grid_error": on_grid.mean(),
        "off_grid_error": measured.mean("off_grid", name),
        "aliasing_error": measured.mean("aliasing", name),
        "local_aliasing": measured.mean("local", name),
    }
    for field_name, value in values.items():
        if value is None:
            measured.why(name, field_name, ZERO_OUTPUT)
    receptive = None
    if isinstance(state, Field):
        receptive = _receptive_field(state, size=size)
    elif isinstance(state, Unknown):
        measured.why(name, "receptive_field", state.reason)
    elif has_analysis:
        measured.why(name, "receptive_field", "the output does not depend on the input")
    detail = role.detail if role is not None else None
    if role is not None and role.role == "position_leak" and head and detail:
        detail = detail.replace("dense layer", "dense head")
    return LayerEntry(
        name=name,
        op_type=op_type,
        shape=shape,
        kind=geometry.kind,
        stride=geometry.stride,
        shifts=on_grid_shifts(geometry.stride) if geometry.stride is not None else [],
        relative_error=values["on_grid_error"],
        relative_error_max=on_grid.max(),
        cosine=measured.mean("cosine", name),
        on_grid_error=values["on_grid_error"],
        off_grid_error=values["off_grid_error"],
        aliasing_error=values["aliasing_error"],
        local_aliasing=values["local_aliasing"],
        receptive_field=receptive,
        role=role.role if role is not None else None,
        role_detail=detail,
        reasons={
            k: v
            for k, v in measured.reasons.get(name, {}).items()
            if _is_null(k, values, receptive)
        },
    )


def _is_null(
    field_name: str, values: Mapping[str, float | None], receptive: ReceptiveField | None
) -> bool:
    if field_name == "receptive_field":
        return receptive is None
    return values.get(field_name) is None
