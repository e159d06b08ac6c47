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
- local aliasing: 3 runs in which every profiled node runs once, on the ideally shifted
  inputs: each at most one forward pass (the unshifted reference is the torus variant's own
  output of the node).

In all at most P (11 + 3 S) (`shiftaudit.cost.layer_profile_forward_passes`); without graph access
(TorchScript) at most P (4 + 3 S). Each pass also keeps every intermediate output it compares.
A fractional comparison on the deployed network costs one forward real FFT of the shifted
output (by Parseval, against the reference's spectrum, taken once for its three shifts); on the
torus variant, the ideal shift T_{t/j} h of each map is made once per t (one inverse FFT) and
serves as the reference of its aliasing_error, of its own local_aliasing and as the input of
the nodes that read it. A per-channel affine layer (an inference batch norm, a node of its
own in a torch.export graph) costs neither at a fractional shift: its distance follows from
its input's per-channel residuals and its ideal shift is a T x + b (channel_affine.py). On a
CPU the probes run one at a time (`_chunks`: memory).

How it runs (`parallel.py`): on a CPU, torch at one intra-op thread, the comparisons of one
step (one per layer) and the shifted inputs of a local run (one per tensor) side by side on
worker threads, and each model run (deployed, torus, local) during the comparisons of the
previous one. The numbers are those of the plain, one-at-a-time computation (to the rounding
of float32 arithmetic on one thread instead of several, tests/test_profile_parallel.py).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch

from ..report import LayerEntry, LayerProfile, ReceptiveField, TorusVariant
from ..runtimes import Runtime
from ..threads import resolve_vml_kernels
from .access import TORCHSCRIPT, Graph, open_graph
from .channel_affine import ChannelAffine
from .equivariance import (
    OFF_GRID,
    ErrorSamples,
    errors_against,
    on_grid_shifts,
    output_shift,
    relative_errors,
    shift_errors,
)
from .findings import layer_findings
from .geometry import NON_SPATIAL as NON_SPATIAL_GEOMETRY
from .geometry import Geometry, geometry_of
from .graph import Concat, Shape, Shift, StaticGraph
from .ideal_shift import IdealShifter, distances_of, is_integer_shift
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
    resolve_vml_kernels()  # before its threads compare layers side by side
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
    analysis = None
    if graph is not None:
        analysis = receptive_fields(graph.static, size=size, layout=layout)
        graph.prepare_torus(analysis)
    torus = TorusVariant(available=False, reason=graph_reason, rewritten=[], refused={})
    affines = _channel_affines(graph)
    probe_passes = 0
    for number, chunk in enumerate(_chunks(inputs, model.device)):
        before = measured.passes
        deployed = _deployed(model, graph, chunk)
        measured.passes += 1
        values = deployed.reference
        geometries = {
            name: geometry_of(value.shape, size=size, layout=layout)
            for name, value in values.items()
        }
        _deployed_errors(
            deployed,
            chunk,
            geometries,
            measured,
            followers=_followers(affines, values, geometries),
            dims=dims,
            tasks=tasks,
        )
        if graph is not None and analysis is not None and (number == 0 or torus.available):
            torus = _torus_errors(
                graph,
                analysis,
                chunk,
                geometries,
                measured,
                affines=affines,
                dims=dims,
                layout=layout,
                size=size,
                tasks=tasks,
            )
            if not torus.available:  # for one probe: then for none, the reason says why
                measured.samples["aliasing"].clear()
                measured.samples["local"].clear()
        elif graph is None:
            for name in values:
                for field_name in ("aliasing_error", "local_aliasing", "receptive_field"):
                    measured.why(name, field_name, graph_reason or TORCHSCRIPT)
        probe_passes += (measured.passes - before) * int(chunk.shape[0])
    entries = _entries(
        reference=deployed.layers,
        shapes={name: [count, *value.shape[1:]] for name, value in values.items()},
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
        forward_passes=probe_passes,
        findings=layer_findings(entries, roles=roles, size=size),
    )


def _chunks(inputs: torch.Tensor, device: torch.device) -> list[torch.Tensor]:
    """The probes as the profile runs them: one at a time on a CPU, all at once elsewhere.

    Every error is per probe, so the chunks change no number beyond float32 rounding. On a
    CPU the profile's cost is memory: each run keeps every intermediate output, and a few
    runs' outputs, spectra and ideal shifts are alive at once (5.5 GB resident for 4 probes
    of EfficientNet-Lite1 at 240 px), and perf found 47 % of the profile's CPU time in the
    kernel, most of it zeroing fresh pages; one probe at a time: 2.0 GB, and 1.1 s of system
    time instead of 6.4 s. On a GPU a batch amortises the launches, and its memory is the
    device's."""
    if device.type != "cpu" or len(inputs) < 2:
        return [inputs]
    return [inputs[i : i + 1] for i in range(len(inputs))]


@dataclass
class _Deployed:
    """The deployed network's intermediate outputs (and those of the unshifted inputs)."""

    layers: list[tuple[str, str]]  # (name, op type), in graph order
    reference: dict[str, torch.Tensor]
    # The outputs named for an input: a run fetches only the layers a shift compares.
    run: Callable[[torch.Tensor, Collection[str]], dict[str, torch.Tensor]]


def _deployed(model: Runtime, graph: Graph | None, inputs: torch.Tensor) -> _Deployed:
    """The deployed network, run through the profile's own view of the graph where there is
    one (ONNX, torch.export: the same float graph, in ONNX sessions whose threads do not spin
    while torch works between runs), else through the runtime's `forward_with_layers`."""
    if graph is not None:
        op_types = {node.name: node.op_type for node in graph.static.nodes}

        def run_graph(x: torch.Tensor, names: Collection[str]) -> dict[str, torch.Tensor]:
            values = graph.run(x, torus=False, keep=set(names))
            return {name: _floating(values[name]) for name in names}

        names = graph.layer_names()
        layers = [(name, op_types[name]) for name in names]
        return _Deployed(layers, run_graph(inputs, names), run_graph)

    def run_runtime(x: torch.Tensor, names: Collection[str]) -> dict[str, torch.Tensor]:
        recorded = model.forward_with_layers(x)[1]
        return {layer.name: layer.value for layer in recorded if layer.name in names}

    _, recorded = model.forward_with_layers(inputs)
    layers = [(layer.name, layer.op_type) for layer in recorded]
    return _Deployed(layers, {layer.name: layer.value for layer in recorded}, run_runtime)


def _prefetched(
    run: Callable[[tuple[int, int]], dict[str, Any]],
    shifts: Sequence[tuple[int, int]],
    *,
    ahead: int = 2,
) -> Iterator[dict[str, Any]]:
    """run(t) for each shift in order, the runs of the next `ahead` shifts going on in worker
    threads while the caller compares the current one (up to ahead + 1 runs' outputs are then
    held at once).

    ONNX Runtime and torch release the GIL while they compute, so the model's runs and the
    comparisons share the cores, each on its own threads; a run keeps the caller's inference
    mode and autocast (`in_callers_modes`), which are a thread's own. Two runs side by side:
    the deployed network's runs outnumber its comparisons' work on the layers they read."""
    run = in_callers_modes(run)
    with ThreadPoolExecutor(max_workers=ahead) as pool:
        pending = [pool.submit(run, t) for t in shifts[:ahead]]
        for i in range(len(shifts)):
            result = pending.pop(0).result()
            if i + ahead < len(shifts):
                pending.append(pool.submit(run, shifts[i + ahead]))
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
    followers: Mapping[str, ChannelAffine],
    dims: tuple[int, int],
    tasks: Tasks,
) -> None:
    """on_grid_error (and cosine) and off_grid_error on the deployed network, the layers of
    one shift compared side by side (`tasks`); at a fractional shift a per-channel affine
    layer's distance comes from its input's comparison (`followers`, channel_affine.py), so
    the run does not return it."""
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

    def kinds(name: str, t: tuple[int, int]) -> tuple[bool, bool]:
        stride = references[name].geometry.stride
        assert stride is not None
        return t in on_grid[stride], t in OFF_GRID

    def fractional(name: str, t: tuple[int, int]) -> bool:
        stride = references[name].geometry.stride
        assert stride is not None
        return not is_integer_shift(output_shift(t, stride))

    compared = {t: [name for name in references if any(kinds(name, t))] for t in shifts}
    derived = {
        t: {
            name: affine
            for name, affine in followers.items()
            if name in compared[t] and affine.source in compared[t] and fractional(name, t)
        }
        for t in shifts
    }
    runs = _prefetched(
        lambda t: deployed.run(
            torch.roll(inputs, t, dims=dims), [n for n in compared[t] if n not in derived[t]]
        ),
        shifts,
    )
    for t, shifted in zip(shifts, runs, strict=True):
        measured.passes += 1
        names = [name for name in compared[t] if name not in derived[t]]
        reading = {
            name: [f for f, affine in derived[t].items() if affine.source == name] for name in names
        }

        def compare(
            name: str,
            t: tuple[int, int] = t,
            shifted: Mapping[str, Any] = shifted,
            reading: Mapping[str, list[str]] = reading,
        ) -> Sequence[tuple[str, torch.Tensor, torch.Tensor | None]]:
            if not reading[name]:
                errors, cosine = shift_errors(
                    shifted=shifted[name],
                    reference=references[name],
                    t=t,
                    with_cosine=kinds(name, t)[0],
                )
                return [(name, errors, cosine)]
            reference = references[name]
            d = output_shift(t, reference.geometry.stride or 1)
            powers = reference.channel_powers(shifted[name], d)
            return [(name, relative_errors(distances_of(powers), reference), None)] + [
                (f, relative_errors(derived[t][f].distances(powers), references[f]), None)
                for f in reading[name]
            ]

        for name, errors, cosine in (row for rows in tasks.map(compare, names) for row in rows):
            on, off = kinds(name, t)
            if on and cosine is not None:
                measured.add("on_grid", name, errors)
                measured.add("cosine", name, cosine)
            if off:
                measured.add("off_grid", name, errors)


def _channel_affines(graph: Graph | None) -> dict[str, ChannelAffine]:
    """The graph's layers that are per-channel affine maps of their input, read once."""
    if graph is None:
        return {}
    found = {name: graph.channel_affine(name) for name in graph.layer_names()}
    return {name: affine for name, affine in found.items() if affine is not None}


def _followers(
    affines: Mapping[str, ChannelAffine],
    values: Mapping[str, torch.Tensor],
    geometries: Mapping[str, Geometry],
) -> dict[str, ChannelAffine]:
    """The layers that are a per-channel affine map (`affines`) of another layer on the same
    NCHW grid, by name; the input of each is not such a layer itself."""
    found: dict[str, ChannelAffine] = {}
    for name, value in values.items():
        affine = affines.get(name)
        if affine is None or affine.source not in values or affine.source in found:
            continue
        geometry = geometries[name]
        if (
            geometry.kind == "map"
            and geometry.dims == (2, 3)
            and geometries[affine.source] == geometry
            and value.shape[1] == affine.scale.numel()
        ):
            found[name] = affine
    return found


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
    affines: Mapping[str, ChannelAffine],
    dims: tuple[int, int],
    layout: str,
    size: tuple[int, int],
    tasks: Tasks,
) -> TorusVariant:
    """aliasing_error and local_aliasing, on the torus variant (`graph.prepare_torus` done)."""
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
        _torus_shift_errors(
            graph,
            base,
            inputs,
            clean,
            cones,
            geometries,
            measured,
            affines=affines,
            dims=dims,
            layout=layout,
            size=size,
            tasks=tasks,
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


def _torus_shift_errors(
    graph: Graph,
    base: Mapping[str, Any],
    inputs: torch.Tensor,
    clean: Sequence[str],
    cones: Mapping[str, Sequence[str]],
    geometries: Mapping[str, Geometry],
    measured: _Measured,
    *,
    affines: Mapping[str, ChannelAffine],
    dims: tuple[int, int],
    layout: str,
    size: tuple[int, int],
    tasks: Tasks,
) -> None:
    """aliasing_error and local_aliasing, one off-grid t at a time, from one set of ideal
    shifts of the torus variant's maps h = base:

        aliasing_error  ||F_torus(roll_t x) - T_{t/j} h|| / ||h||
        local_aliasing  ||f(T_{t/j_1} h_1, ...) - T_{t/j} h|| / ||h||,  h = f(h_1, ...)

    T_{t/j} h of a map is both the reference of its own comparisons and the shifted input of
    the nodes that read it, so each is made once per t (side by side, `tasks`); a node's own
    output in the torus variant is f(h_1, ...), the node on the same inputs. The model runs
    (the torus variant on roll_t x, the nodes alone) go on in a worker thread while the
    previous comparisons are made."""
    aliased = list(clean) if graph.rewritten else []
    if not graph.rewritten:  # the network is its own torus variant
        for name in clean:
            if name in measured.samples["off_grid"]:
                measured.samples["aliasing"][name] = measured.samples["off_grid"][name]
    runnable, reads = _local_reads(graph, base, cones, measured, layout=layout, size=size)
    moving: dict[str, Geometry] = {name: geometries[name] for name in (*aliased, *runnable)}
    for pairs in reads.values():
        for tensor, geometry in pairs:
            if geometry is not None and geometry.stride is not None:
                moving.setdefault(tensor, geometry)
    if not moving:
        return
    # Made here, in order, before any thread reads them: each spectrum is taken once.
    shifters = {tensor: IdealShifter(base[tensor], geometry) for tensor, geometry in moving.items()}
    followers = _followers(affines, {t: base[t] for t in moving}, moving)

    def ideal_shifts(t: tuple[int, int]) -> dict[str, torch.Tensor]:
        """T_{t/j} of every moving map; at a fractional shift a per-channel affine map's as
        a T x + b of its input's (channel_affine.py), with no transform of its own."""

        def d(tensor: str) -> tuple[float, float]:
            return output_shift(t, moving[tensor].stride or 1)

        derived = [y for y in followers if not is_integer_shift(d(y))]
        direct = [tensor for tensor in moving if tensor not in derived]
        ideal = dict(zip(direct, tasks.map(lambda x: shifters[x](d(x)), direct), strict=True))
        moved = tasks.map(lambda y: followers[y].apply(ideal[followers[y].source]), derived)
        return ideal | dict(zip(derived, moved, strict=True))

    def torus_run(t: tuple[int, int]) -> dict[str, Any]:
        return graph.run(torch.roll(inputs, t, dims=dims), torus=True, keep=set(aliased))

    def alone_run(ideal: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        moved = {
            name: (cones[name], [ideal.get(tensor, base[tensor]) for tensor, _ in reads[name]])
            for name in runnable
        }
        return graph.run_alone(moved)

    def compare(
        names: Sequence[str], outputs: Mapping[str, Any], ideal: Mapping[str, torch.Tensor]
    ) -> list[torch.Tensor]:
        return tasks.map(
            lambda name: errors_against(
                shifted=outputs[name], ideal=ideal[name], reference=shifters[name]
            ),
            names,
        )

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="shiftaudit-runs") as runs:
        pending = runs.submit(in_callers_modes(torus_run), OFF_GRID[0]) if aliased else None
        for i, t in enumerate(OFF_GRID):
            ideal = ideal_shifts(t)
            alone = runs.submit(in_callers_modes(alone_run), ideal) if runnable else None
            torus = pending.result() if pending is not None else None
            if aliased and i + 1 < len(OFF_GRID):
                pending = runs.submit(in_callers_modes(torus_run), OFF_GRID[i + 1])
            if torus is not None:
                measured.passes += 1
                for name, errors in zip(aliased, compare(aliased, torus, ideal), strict=True):
                    measured.add("aliasing", name, errors)
            if alone is not None:
                measured.passes += 1
                outputs = alone.result()
                for name, errors in zip(runnable, compare(runnable, outputs, ideal), strict=True):
                    measured.add("local", name, errors)


def _local_reads(
    graph: Graph,
    base: Mapping[str, Any],
    cones: Mapping[str, Sequence[str]],
    measured: _Measured,
    *,
    layout: str,
    size: tuple[int, int],
) -> tuple[list[str], dict[str, list[tuple[str, Geometry | None]]]]:
    """The nodes whose local aliasing can be measured, and per node the tensors its cone reads
    from outside, each with its geometry (None: weights, constants, sizes and non-spatial
    values, which pass unchanged). The others get their reason."""
    activations = graph.static.activations

    def input_geometry(tensor: str) -> Geometry | None:
        value = base.get(tensor)
        if tensor not in activations or not isinstance(value, torch.Tensor):
            return None
        geometry = geometry_of(value.shape, size=size, layout=layout)
        return geometry if geometry.spatial else None

    runnable, reads = [], {}
    for name, cone in cones.items():
        pairs = [(t, input_geometry(t)) for t in graph.inputs_of(cone)]
        integer = [t for t, g in pairs if g is not None and not base[t].is_floating_point()]
        if integer:
            measured.why(name, "local_aliasing", INTEGER_INPUT.format(integer[0]))
        elif any(g is not None for _, g in pairs):
            runnable.append(name)
            reads[name] = pairs
        else:
            measured.why(name, "local_aliasing", NO_SPATIAL_INPUT)
    return runnable, reads


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
    shapes: Mapping[str, list[int]],
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
            dims = shapes[name]
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
