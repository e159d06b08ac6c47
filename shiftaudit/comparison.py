"""What comparing two audits reports, and the names of the metrics it compares.

Pure pydantic (no numpy), so that the API contract and a light client can use these types;
`shiftaudit.compare` computes them.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Metric(StrEnum):
    """A summary metric of the report (report.Summary), or an accuracy drop derived from two
    of them: accuracy minus the shifted accuracy, in points of accuracy (0-1)."""

    CONSISTENCY = "consistency"
    FLIP_RATE = "flip_rate"
    MEAN_PROB_CHANGE = "mean_prob_change"
    MEAN_KL = "mean_kl"
    INVARIANT_FRACTION = "invariant_fraction"
    ACCURACY = "accuracy"
    SHIFT_ACCURACY_MEAN = "shift_accuracy_mean"
    WORST_CASE_ACCURACY = "worst_case_accuracy"
    WORST_CASE_ACCURACY_DROP = "worst_case_accuracy_drop"
    SHIFT_ACCURACY_DROP = "shift_accuracy_drop"


# Metric -> its per-probe statistic (metrics.py).
METRICS: dict[Metric, str] = {
    Metric.CONSISTENCY: "consistency",
    Metric.FLIP_RATE: "flip",
    Metric.MEAN_PROB_CHANGE: "prob_change",
    Metric.MEAN_KL: "kl",
    Metric.INVARIANT_FRACTION: "invariant",
    Metric.ACCURACY: "correct",
    Metric.SHIFT_ACCURACY_MEAN: "shift_acc",
    Metric.WORST_CASE_ACCURACY: "all_correct",
    # Per probe: unshifted correct minus the shifted outcome.
    Metric.WORST_CASE_ACCURACY_DROP: "all_correct_drop",
    Metric.SHIFT_ACCURACY_DROP: "shift_acc_drop",
}
HIGHER_IS_BETTER = frozenset(
    {
        Metric.CONSISTENCY,
        Metric.INVARIANT_FRACTION,
        Metric.ACCURACY,
        Metric.SHIFT_ACCURACY_MEAN,
        Metric.WORST_CASE_ACCURACY,
    }
)
SIGNIFICANCE = 0.05


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Delta(_Frozen):
    metric: str
    baseline: float
    candidate: float
    delta: float = Field(description="candidate - baseline")
    ci_low: float | None = Field(description="95% bootstrap interval of the delta")
    ci_high: float | None
    significant: bool = Field(description="the interval excludes 0")


class McNemar(_Frozen):
    """Exact McNemar test on per-probe invariance (paired audits only)."""

    baseline_only: int = Field(description="probes invariant in the baseline only")
    candidate_only: int = Field(description="probes invariant in the candidate only")
    p_value: float
    significant: bool


class Comparison(_Frozen):
    pairing: Literal["paired", "unpaired"]
    reason: str | None = Field(description="why the audits could not be paired")
    deltas: list[Delta]
    mcnemar: McNemar | None
