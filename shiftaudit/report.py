"""The versioned audit report. `Report.model_json_schema()` is the published JSON Schema.

Bump SCHEMA_VERSION's major part when a field changes meaning or disappears, the minor part
when fields are added; readers accept any report with the same major version.
"""

from __future__ import annotations

from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field

from .config import AuditConfig, ShiftMode

SCHEMA_VERSION: Final = "1.1"


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


class LayerEntry(_Frozen):
    name: str
    op_type: str
    shape: list[int] = Field(description="Output shape for the profile batch.")
    kind: Literal["map", "tokens", "non_spatial"]
    stride: int | None = Field(description="H / h; None for non-spatial outputs.")
    shifts: list[tuple[int, int]] = Field(
        description="Circular input shifts used (multiples of s)."
    )
    relative_error: float | None = Field(
        description="Mean over probes and shifts of ||F(roll_t x) - roll_{t/s} F(x)|| / ||F(x)||."
    )
    relative_error_max: float | None
    cosine: float | None = Field(description="Mean cosine similarity of the same two tensors.")


class LayerProfile(_Frozen):
    available: bool
    reason: str | None = Field(description="Why the profile is missing or partial.")
    probes: int
    entries: list[LayerEntry]


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
    schema_version: Literal["1.1"] = SCHEMA_VERSION
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
