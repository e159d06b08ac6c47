"""Comparison statistics on constructed cases with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from shiftaudit.compare import compare, mcnemar_exact
from shiftaudit.config import AuditConfig
from shiftaudit.engine import probe_values, sweep_shard

from .nets import GlobalPoolNet, export_program, phase_probes


@pytest.mark.parametrize(
    ("b", "c", "p"),
    [
        (0, 0, 1.0),
        (5, 5, 1.0),
        (24, 0, 2 / 2**24),
        # 2 * (C(13,0) + C(13,1) + C(13,2) + C(13,3)) / 2**13
        (3, 10, 2 * (1 + 13 + 78 + 286) / 2**13),
        (10, 3, 2 * (1 + 13 + 78 + 286) / 2**13),
    ],
)
def test_exact_mcnemar_against_binomial_sums(b, c, p):
    assert mcnemar_exact(b, c) == pytest.approx(p, rel=1e-12)


def test_a_large_mcnemar_stays_finite_and_exact():
    # n = 20000, 9900 vs 10100: z = 1.414, two-sided normal p = 0.157 (continuity ~0.16)
    assert mcnemar_exact(9900, 10100) == pytest.approx(0.1596, abs=2e-3)


def test_identical_audits_differ_in_nothing():
    rng = np.random.default_rng(0)
    values = {"consistency": rng.random(50), "invariant": (rng.random(50) > 0.5).astype(float)}
    result = compare(values, values, unpaired_reason=None, resamples=500)
    assert result.pairing == "paired"
    for delta in result.deltas:
        assert (delta.delta, delta.ci_low, delta.ci_high, delta.significant) == (0, 0, 0, False)
    assert result.mcnemar is not None
    assert (result.mcnemar.p_value, result.mcnemar.significant) == (1.0, False)


@pytest.fixture(scope="module")
def phase_set(tmp_path_factory):
    return phase_probes(tmp_path_factory.mktemp("phase"), 24)


def _values(model, probes):
    config = AuditConfig.model_validate(
        {
            "preprocess": {"input_size": [16, 16], "resize": 16},
            "sweep": {"mode": "circular", "max_shift": 2},
            "runtime": {"batch_size": 25},
            "bootstrap": 0,
        }
    )
    return probe_values([sweep_shard(model, probes, config)], config)


def test_a_model_that_flips_on_odd_shifts_is_significantly_worse(tmp_path, phase_set):
    invariant = _values(export_program(GlobalPoolNet(stride=1), tmp_path / "a.pt2"), phase_set)
    aliasing = _values(export_program(GlobalPoolNet(stride=2), tmp_path / "b.pt2"), phase_set)
    result = compare(invariant, aliasing, unpaired_reason=None, resamples=2000)
    by_name = {d.metric: d for d in result.deltas}
    consistency = by_name["consistency"]
    assert consistency.baseline == 1.0
    assert consistency.delta < 0
    assert consistency.significant
    assert consistency.ci_high is not None
    assert consistency.ci_high < 0
    assert result.mcnemar is not None
    # Every probe is invariant under the stride-1 net; b counts those the stride-2 net breaks.
    assert result.mcnemar.candidate_only == 0
    broken = int((aliasing["invariant"] < 0.5).sum())
    assert result.mcnemar.baseline_only == broken
    assert result.mcnemar.p_value == pytest.approx(mcnemar_exact(broken, 0))
    assert result.mcnemar.significant


def test_unpaired_comparison_says_why_and_skips_mcnemar(tmp_path, phase_set):
    values = _values(export_program(GlobalPoolNet(stride=1), tmp_path / "a.pt2"), phase_set)
    fewer = {k: v[:10] for k, v in values.items()}
    result = compare(values, fewer, unpaired_reason="different probe sets", resamples=200)
    assert (result.pairing, result.reason, result.mcnemar) == (
        "unpaired",
        "different probe sets",
        None,
    )
