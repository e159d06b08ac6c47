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

import numpy as np

from .comparison import METRICS, SIGNIFICANCE, Comparison, Delta, McNemar
from .metrics import resampled_means


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
