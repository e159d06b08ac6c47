"""The versioned audit report. `Report.model_json_schema()` is the published JSON Schema.

Bump SCHEMA_VERSION's major part when a field changes meaning or disappears, the minor part
when fields are added; readers accept any report with the same major version.
"""

from __future__ import annotations

from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field

from .config import AuditConfig, ShiftMode

SCHEMA_VERSION: Final = "1.2"


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Estimate(_Frozen):
    """A mean over probes with its percentile-bootstrap 95% interval (resampling probes)."""

    value: float
    ci_low: float | None = Field(description="None when bootstrap is 0 or fewer than 2 probes.")
    ci_high: float | None
    n: int = Field(description="Number of probes the mean is over.")


class Summary(_Frozen):
    """Summary metrics (science.md). None: not defined for this sweep or without labels."""

    consistency: Estimate
    flip_rate: Estimate | None = Field(description="None when the shift set has no adjacent pairs.")
    mean_prob_change: Estimate | None
    mean_kl: Estimate
    invariant_fraction: Estimate | None = Field(description="None under random-pair sampling.")
    accuracy: Estimate | None = None
    shift_accuracy_mean: Estimate | None = None
    worst_case_accuracy: Estimate | None = Field(None, description="None under sampling.")


class SummarySplit(_Frozen):
    """All probes, and the probes split by whether the unshifted prediction was correct."""

    all: Summary
    unshifted_correct: Summary | None = Field(description="Labelled sets with such probes only.")
    unshifted_wrong: Summary | None


class Period(_Frozen):
    """Smallest p whose phase classes (shift mod p on that axis) make the map constant."""

    dy: int | None
    dx: int | None
    phase_agreement: list[list[float]] | None = Field(
        description="Mean agreement over (dy mod p, dx mod p) for p = max(dy, dx) period found."
    )


class ShiftMap(_Frozen):
    shifts: list[tuple[float, float]] = Field(description="(dy, dx) for each shift, in pixels.")
    agreement: list[float | None] = Field(description="A(t): share agreeing with t = 0.")
    accuracy: list[float | None] | None = None
    evaluations: list[int] = Field(description="Probes evaluated at each shift.")
    period: Period | None = Field(description="None unless the shifts form a full grid.")


class ReceptiveField(_Frozen):
    """The static receptive field of a layer's units, per image axis (y, x); added in 1.2.

    Dang Ha The Hien's arithmetic read from the graph (science.md, report 1.2), with input
    pixel i centred at i + 0.5, so the image spans [0, H] x [0, W].
    """

    size: tuple[float, float] = Field(
        description="rf: the side of the input window one unit sees, in input pixels (y, x); "
        "for a field that mixes all positions, the union of all units' windows."
    )
    jump: tuple[float, float] = Field(
        description="Input pixels between adjacent units (y, x): the cumulative stride."
    )
    start: tuple[float, float] = Field(
        description="Centre of the first unit's field in input pixels (y, x); unit i is "
        "centred at start + i * jump. For a field that mixes all positions: the centre of the "
        "field every unit shares."
    )
    input_fraction: tuple[float, float] = Field(
        description="size / input side, (size_y / H, size_x / W); >= 1 on both axes: the field "
        "covers the input."
    )
    border_fraction: float = Field(
        description="Share of the layer's units (over the h x w grid) whose field reaches past "
        "the image, i.e. that can see padding."
    )
    border_fraction_axes: tuple[float, float] = Field(
        description="The same share per axis (y over h rows, x over w columns)."
    )
    mixes_all_positions: bool = Field(
        description="Whether every unit's field is the union of all positions' fields (after "
        "a global pool, a dense layer on a flattened map, attention over tokens, a "
        "normalisation over positions)."
    )
    note: str | None = Field(
        None,
        description="Set where the inputs of an element-wise op disagree on jump or start.",
    )


LayerRole = Literal["global_pool", "position_leak"]


class LayerEntry(_Frozen):
    name: str
    op_type: str
    shape: list[int] = Field(description="Output shape for the profile batch.")
    kind: Literal["map", "tokens", "non_spatial"]
    stride: int | None = Field(description="j = H / h; None for non-spatial outputs.")
    shifts: list[tuple[int, int]] = Field(
        description="Circular input shifts used on grid: (j, 0), (0, j), (j, j)."
    )
    relative_error: float | None = Field(
        description="Mean over probes and shifts of ||F(roll_t x) - roll_{t/j} F(x)|| / ||F(x)||."
    )
    relative_error_max: float | None
    cosine: float | None = Field(description="Mean cosine similarity of the same two tensors.")
    on_grid_error: float | None = Field(
        None,
        description="E(F, t) = ||F(roll_t x) - T_{t/j} F(x)|| / ||F(x)|| (Frobenius per probe) "
        "averaged over probes and t in {(j, 0), (0, j), (j, j)}, on the deployed network: "
        "equal to relative_error. Zero for a network that pads circularly, so it measures "
        "border (padding) effects; added in 1.2.",
    )
    off_grid_error: float | None = Field(
        None,
        description="E(F, t) averaged over probes and the one-pixel moves t in {(1, 0), (0, 1), "
        "(1, 1)}, T_{t/j} the ideal (Fourier) shift, on the deployed network: aliasing and "
        "borders together; added in 1.2.",
    )
    aliasing_error: float | None = Field(
        None,
        description="off_grid_error of the torus variant (the same weights with every padding "
        "made circular): aliasing alone; added in 1.2.",
    )
    local_aliasing: float | None = Field(
        None,
        description="The aliasing this node adds by itself, on the torus variant: "
        "||f(T_{t/j_1} h_1, ...) - T_{t/j} f(h_1, ...)|| / ||f(h_1, ...)|| for the node f run "
        "alone on its inputs h_k (strides j_k) shifted ideally, averaged over probes and the "
        "off-grid t; added in 1.2.",
    )
    receptive_field: ReceptiveField | None = Field(
        None, description="The static receptive field; added in 1.2."
    )
    role: LayerRole | None = Field(
        None,
        description="global_pool: the spatial axes are reduced here (invariance can appear); "
        "position_leak: a dense layer reads a flattened map with more than one position, so "
        "position can enter the decision; added in 1.2.",
    )
    role_detail: str | None = Field(
        None, description="The role in words with its map size, e.g. 'dense layer on a 4x4 map'."
    )
    reasons: dict[str, str] = Field(
        default_factory=dict,
        description="Why a 1.2 field is null, keyed by field name (on_grid_error, "
        "off_grid_error, aliasing_error, local_aliasing, receptive_field).",
    )


class TorusVariant(_Frozen):
    """What the torus rewrite changed and refused; added in 1.2."""

    available: bool = Field(description="Whether a torus variant could be built at all.")
    reason: str | None = Field(description="Why not, when it could not.")
    rewritten: list[str] = Field(
        description="Layers whose padding the torus variant makes circular (same amounts)."
    )
    refused: dict[str, str] = Field(
        description="Nodes the rewrite does not know or cannot make circular, with the reason; "
        "aliasing_error and local_aliasing are null for them and every layer after them."
    )


class AliasingBirth(_Frozen):
    """The node with the largest local_aliasing: where a one-pixel flip is born."""

    node: str = Field(description="The layer entry's name (its output).")
    op_type: str = Field(description="The node's op, as the entry has it.")
    local_aliasing: float = Field(description="Its local_aliasing.")
    stride: int | None = Field(description="Its output's stride j.")


class FieldCoverage(_Frozen):
    """The first layer, in graph order, whose receptive field covers the input."""

    node: str = Field(description="The layer entry's name (its output).")
    op_type: str = Field(description="The node's op, as the entry has it.")
    size: tuple[float, float] = Field(description="Its receptive field size (y, x), pixels.")
    input_fraction: tuple[float, float] = Field(description="size / input side (y, x), >= 1.")
    stride: int | None = Field(description="Its output's stride j; None if non-spatial.")


class RoleFinding(_Frozen):
    """A global_pool or a position_leak, with the map it reduces or reads."""

    node: str = Field(description="The layer entry's name (its output).")
    op_type: str = Field(description="The node's op, as the entry has it.")
    role: LayerRole = Field(description="global_pool or position_leak.")
    map_size: tuple[int, int] = Field(description="h x w of the map reduced or read.")
    detail: str = Field(description="The role in words, e.g. 'dense head on a 4x4 map'.")


class LayerFindings(_Frozen):
    """The diagnosis of the layer profile, each part with its numbers; added in 1.2."""

    aliasing_born_at: AliasingBirth | None = Field(
        description="The node with the largest local_aliasing, when that exceeds 1e-4."
    )
    aliasing_reason: str | None = Field(description="Why aliasing_born_at is null.")
    aliasing_missing: str | None = Field(
        None, description="Set when local aliasing could not be measured at all: why."
    )
    field_covers_input_at: FieldCoverage | None = Field(
        description="The first layer whose field size is at least the input side on both axes."
    )
    field_reason: str | None = Field(description="Why field_covers_input_at is null.")
    fields_missing: str | None = Field(
        None,
        description="Set when no receptive field (and so no role) could be read at all: why; "
        "global_pools and position_leaks are then empty because nothing was analysed.",
    )
    global_pools: list[RoleFinding] = Field(description="Every global_pool, in graph order.")
    position_leaks: list[RoleFinding] = Field(
        description="Every position_leak, in graph order; empty: no dense layer reads a map of "
        "more than one position (or, with fields_missing set, nothing was analysed)."
    )
    summary: list[str] = Field(
        description="The diagnosis in two or three lines, as the CLI prints it."
    )


class LayerProfile(_Frozen):
    available: bool
    reason: str | None = Field(description="Why the profile is missing or partial.")
    probes: int
    entries: list[LayerEntry]
    off_grid_shifts: list[tuple[int, int]] = Field(
        default_factory=list,
        description="The input shifts of off_grid_error, aliasing_error and local_aliasing; "
        "added in 1.2.",
    )
    torus: TorusVariant | None = Field(None, description="The torus variant; added in 1.2.")
    forward_passes: int | None = Field(
        None,
        description="Model-forward equivalents the profile spent (forward passes of the whole "
        "model, times the probes); added in 1.2.",
    )
    findings: LayerFindings | None = Field(None, description="The diagnosis; added in 1.2.")


class PositionMap(_Frozen):
    """canvas: agreement (and accuracy) by the top-left position of the pasted probe."""

    object_size: int
    positions_y: list[int]
    positions_x: list[int]
    agreement: list[list[float]]
    accuracy: list[list[float]] | None


class FlipExample(_Frozen):
    shift: tuple[float, float]
    predicted: int


class WorstCase(_Frozen):
    probe: str
    label: int | None
    unshifted_prediction: int
    disagreeing_shifts: int
    disagreement_fraction: float
    examples: list[FlipExample] = Field(description="The smallest shifts that change the answer.")


class AgreementCheck(_Frozen):
    """A candidate runtime's logits against the model's own runtime on the same batch."""

    reference: str = Field(description="The model's own runtime (runtime.backend names).")
    candidate: str
    rows: int = Field(description="Images compared: the first probes, standard preprocessing.")
    same_top1: bool = Field(description="Whether the argmax agreed on every row.")
    max_abs_diff: float = Field(description="Largest absolute logit difference.")
    tolerance: float = Field(description="Allowed difference: 1e-4 * max(1, max |logit|).")
    passed: bool


class RuntimeCandidate(_Frozen):
    """One way of running the model that the engine considered."""

    backend: str
    threads: int | None = Field(description="Intra-op threads; None on a GPU.")
    batch_size: int | None = Field(description="Its fastest batch; None if not timed.")
    memory_format: Literal["contiguous", "channels_last"] | None
    images_per_s: float | None = Field(description="Raw forward throughput at that setting.")
    note: str | None = Field(description="Why it was not timed or not taken, if so.")


class RuntimeChoice(_Frozen):
    """Which runtime ran the sweep, and why."""

    requested: str = Field(description="runtime.backend: auto or a pinned runtime.")
    chosen: str
    reason: str
    candidates: list[RuntimeCandidate] = Field(description="Empty when nothing was measured.")
    checks: list[AgreementCheck] = Field(
        description="Every agreement check that ran, fastest candidate first: those refused, "
        "then the chosen runtime's (none when the model's own runtime was fastest)."
    )


class Provenance(_Frozen):
    model_sha256: str
    model_format: str
    probe_set_sha256: str
    probe_count: int
    labelled: bool
    config: AuditConfig
    seed: int
    engine_version: str
    libraries: dict[str, str]
    device: str
    batch_size: int
    memory_format: Literal["contiguous", "channels_last"]
    execution_provider: str | None
    precision: Literal["fp32", "tf32", "bf16", "fp16"] = Field(
        "fp32",
        description="What the model ran at: runtime.precision where it applies (autocast for "
        "torch models, TF32 on CUDA), else fp32; added in 1.1.",
    )
    shards: int = Field(
        1,
        ge=1,
        description="Probe ranges swept separately (by different workers) and merged exactly; "
        "added in 1.1.",
    )
    backend: str | None = Field(
        None,
        description="What ran the sweep's forward passes: torch, onnxruntime or "
        "onnxruntime-exported (runtime.backend); added in 1.2.",
    )
    threads: int | None = Field(
        None, description="CPU intra-op threads of the forward pass; None on a GPU; added in 1.2."
    )
    runtime_choice: RuntimeChoice | None = Field(
        None, description="The runtimes considered and the agreement check; added in 1.2."
    )
    wall_time_s: float = Field(
        description="Seconds from loading to the report; sharded: the slowest shard plus the merge."
    )
    stage_seconds: dict[str, float] = Field(
        description="load (hashing, model, probe set), tune (including the runtime choice), "
        "sweep, layers, statistics; sharded: summed over shards. Also, within the sweep on a "
        "CPU: sweep_forward (forward passes) and sweep_shift (shift generation)."
    )
    started_at: str


class Report(_Frozen):
    schema_version: str = Field(
        SCHEMA_VERSION,
        pattern=r"^1\.\d+$",
        description="major.minor; readers accept every report of the same major version.",
    )
    mode: ShiftMode
    estimator: Literal["exhaustive", "random_pairs"]
    input_size: tuple[int, int]
    num_classes: int
    summary: SummarySplit
    shift_map: ShiftMap
    layers: LayerProfile
    position_map: PositionMap | None
    worst_cases: list[WorstCase]
    provenance: Provenance


class ShardResult(_Frozen):
    """What sweeping one probe range yields: sufficient statistics, not a report.

    The interchange format between a sandboxed sweep and the process that merges shards
    (`engine.merge_shards`); not part of the published report schema.
    """

    probes: tuple[int, int] = Field(description="[start, stop) probe indices of the set.")
    input_size: tuple[int, int]
    num_classes: int
    layers: LayerProfile | None = Field(description="Measured by the shard holding probe 0.")
    statistics: dict[str, Any] = Field(description="SweepAccumulator.state()")
    precision: Literal["fp32", "tf32", "bf16", "fp16"]
    model_sha256: str
    model_format: str
    probe_set_sha256: str
    probe_count: int
    labelled: bool
    device: str
    batch_size: int
    memory_format: Literal["contiguous", "channels_last"]
    execution_provider: str | None
    backend: str | None = Field(None, description="What ran the forward passes (Provenance).")
    threads: int | None = Field(None, description="CPU intra-op threads; None on a GPU.")
    runtime_choice: RuntimeChoice | None = Field(
        None, description="The runtimes considered and the checks (Provenance)."
    )
    wall_time_s: float
    stage_seconds: dict[str, float]
    started_at: str
