"""Statistics on constructed inputs whose answers are known exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from shiftaudit.config import SweepConfig
from shiftaudit.metrics import SweepAccumulator, bootstrap_means, detect_period
from shiftaudit.shifts import plan_shifts


def test_bootstrap_interval_matches_the_normal_approximation():
    rng = np.random.default_rng(1)
    values = (rng.random(2000) < 0.3).astype(float)
    estimate = bootstrap_means({"x": values}, resamples=2000, seed=0)["x"]
    half_width = 1.96 * values.std() / np.sqrt(len(values))
    assert estimate.value == pytest.approx(values.mean())
    assert estimate.ci_low == pytest.approx(values.mean() - half_width, abs=0.004)
    assert estimate.ci_high == pytest.approx(values.mean() + half_width, abs=0.004)


def test_bootstrap_of_a_constant_has_a_zero_width_interval_and_no_interval_for_one_probe():
    estimate = bootstrap_means({"x": np.ones(50)}, resamples=100, seed=0)["x"]
    assert (estimate.value, estimate.ci_low, estimate.ci_high) == (1.0, 1.0, 1.0)
    single = bootstrap_means({"x": np.array([0.5])}, resamples=100, seed=0)["x"]
    assert single.ci_low is None
    assert single.n == 1


def _one_hot_logp(classes_per_shift: np.ndarray, num_classes: int = 4) -> torch.Tensor:
    """log-probabilities that put 0.97 on the given class at each (probe, shift)."""
    b, k = classes_per_shift.shape
    probs = torch.full((b, k, num_classes), 0.01, dtype=torch.float64)
    probs.scatter_(2, torch.as_tensor(classes_per_shift)[..., None], 0.97)
    return probs.log()


def _accumulate(plan, top, ids, labels=None):
    acc = SweepAccumulator(plan, sampled=False, labelled=labels is not None, worst_case_limit=3)
    for rows in np.array_split(np.arange(len(ids)), min(3, len(ids))):
        chunk = acc.reduce(
            logp=_one_hot_logp(top[rows]),
            shift_index=torch.arange(plan.count).repeat(len(rows), 1),
            labels=None if labels is None else torch.as_tensor(labels[rows]),
            probe_ids=[ids[r] for r in rows],
            names=[f"p{ids[r]}" for r in rows],
        )
        acc.absorb(chunk)
    return acc


def test_consistency_flip_rate_and_agreement_from_known_predictions():
    plan = plan_shifts(SweepConfig(max_shift=1), (8, 8))  # 3x3 grid, zero at index 4
    top = np.zeros((2, 9), dtype=int)
    top[1, [0, 1]] = 1  # probe 1: two shifts say class 1
    acc = _accumulate(plan, top, [0, 1])
    summary = acc.summary(resamples=0, seed=0).all
    # probe 0: 1.0; probe 1: (7/9)^2 + (2/9)^2
    assert summary.consistency.value == pytest.approx((1 + (49 + 4) / 81) / 2)
    # A 3x3 grid has 12 adjacent pairs; shifts 0 and 1 (class 1) differ from their
    # neighbours in pairs (1, 2), (0, 3) and (1, 4).
    assert summary.flip_rate is not None
    assert summary.flip_rate.value == pytest.approx((0 + 3 / 12) / 2)
    assert summary.invariant_fraction is not None
    assert summary.invariant_fraction.value == 0.5
    assert acc.agreement().tolist() == [0.5, 0.5, 1, 1, 1, 1, 1, 1, 1]
    worst = acc.worst_cases()
    assert [w.probe for w in worst] == ["p1"]
    assert worst[0].disagreeing_shifts == 2


def test_shards_merge_to_exactly_the_whole():
    plan = plan_shifts(SweepConfig(max_shift=2), (8, 8))
    rng = np.random.default_rng(0)
    top = rng.integers(0, 4, (30, plan.count))
    labels = rng.integers(0, 4, 30)
    ids = list(range(30))
    whole = _accumulate(plan, top, ids, labels)
    first = _accumulate(plan, top[20:], ids[20:], labels[20:])  # shards in any order
    first.merge(_accumulate(plan, top[:20], ids[:20], labels[:20]))
    assert first.summary(resamples=200, seed=3) == whole.summary(resamples=200, seed=3)
    assert first.shift_map() == whole.shift_map()
    assert first.worst_cases() == whole.worst_cases()


def test_period_detection_on_constructed_maps():
    plan = plan_shifts(SweepConfig(max_shift=4), (16, 16))
    ys, xs = plan.shifts[:, 0], plan.shifts[:, 1]
    constant = np.ones(plan.count)
    period = detect_period(plan, constant)
    assert period is not None
    assert (period.dy, period.dx) == (1, 1)
    stride_two = np.where((ys % 2 == 0) & (xs % 2 == 0), 1.0, 0.75)
    period = detect_period(plan, stride_two)
    assert period is not None
    assert (period.dy, period.dx) == (2, 2)
    assert period.phase_agreement == [[1.0, 0.75], [0.75, 0.75]]
    rows_only = np.where(ys % 4 == 0, 1.0, 0.5)
    period = detect_period(plan, rows_only)
    assert period is not None
    assert (period.dy, period.dx) == (4, 1)
    noisy = np.random.default_rng(0).random(plan.count)
    period = detect_period(plan, noisy)
    assert period is not None
    assert (period.dy, period.dx) == (None, None)
