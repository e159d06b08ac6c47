"""Comparing two audits metric by metric, paired over the same probes where they can be.

A summary metric is a mean of per-probe values (metrics.py), so the difference between two
audits of the same probes is the mean of per-probe differences, and its interval comes from
resampling probes (the same probes for both audits: a paired bootstrap). Audits of different
probes can only be compared by resampling each on its own (unpaired). Per-probe invariance is
a yes/no outcome per probe, and for paired audits the exact McNemar test asks whether the
probes that changed did so in one direction more than chance allows.
"""

from __future__ import annotations

import math
from enum import StrEnum
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from .metrics import resampled_means


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


def compare(
    baseline: dict[str, np.ndarray],
    candidate: dict[str, np.ndarray],
    *,
    unpaired_reason: str | None,
    resamples: int = 2000,
    seed: int = 0,
) -> Comparison:
    """Compare per-probe statistics; paired (by probe order) unless a reason says otherwise."""
    baseline, candidate = _with_drops(baseline), _with_drops(candidate)
    paired = unpaired_reason is None
    if paired and len(next(iter(baseline.values()))) != len(next(iter(candidate.values()))):
        raise ValueError("paired audits must have the same probes")
    deltas = [
        _delta(name, baseline[key], candidate[key], paired, resamples, seed)
        for name, key in METRICS.items()
        if key in baseline and key in candidate
    ]
    test = None
    if paired and "invariant" in baseline and "invariant" in candidate:
        base, cand = baseline["invariant"] > 0.5, candidate["invariant"] > 0.5
        b, c = int((base & ~cand).sum()), int((~base & cand).sum())
        p = mcnemar_exact(b, c)
        test = McNemar(baseline_only=b, candidate_only=c, p_value=p, significant=p < SIGNIFICANCE)
    return Comparison(
        pairing="paired" if paired else "unpaired",
        reason=unpaired_reason,
        deltas=deltas,
        mcnemar=test,
    )


def _with_drops(values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    drops = {}
    if "correct" in values:
        for key in ("all_correct", "shift_acc"):
            if key in values:
                drops[f"{key}_drop"] = values["correct"] - values[key]
    return values | drops


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value: P(|X - n/2| >= |b - n/2|), X ~ Binomial(b + c, 1/2)."""
    n = b + c
    if n == 0:
        return 1.0
    tail = min(b, c)
    # log C(n, k) - n log 2, summed in log space: exact to rounding for any n.
    logs = [
        math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) - n * math.log(2)
        for k in range(tail + 1)
    ]
    top = max(logs)
    return min(1.0, 2 * math.exp(top) * sum(math.exp(v - top) for v in logs))


def _delta(
    name: str, base: np.ndarray, cand: np.ndarray, paired: bool, resamples: int, seed: int
) -> Delta:
    delta = float(cand.mean() - base.mean())
    low = high = None
    if resamples > 0 and min(len(base), len(cand)) >= 2:
        rng = np.random.default_rng(seed)
        if paired:  # the same resampled probes for both audits
            boot = resampled_means((cand - base)[:, None], resamples, rng)[:, 0]
        else:
            boot = (
                resampled_means(cand[:, None], resamples, rng)[:, 0]
                - resampled_means(base[:, None], resamples, rng)[:, 0]
            )
        low, high = (float(np.percentile(boot, q)) for q in (2.5, 97.5))
    return Delta(
        metric=name,
        baseline=float(base.mean()),
        candidate=float(cand.mean()),
        delta=delta,
        ci_low=low,
        ci_high=high,
        significant=low is not None and high is not None and (low > 0 or high < 0),
    )
