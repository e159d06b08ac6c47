"""Evaluate a finished audit against the policies it was submitted with."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from shiftaudit.comparison import Metric
from shiftaudit.report import Report, Summary
from shiftaudit_api.policies import (
    NoRegression,
    PolicyResult,
    PolicyRules,
    PolicyVerdict,
    Threshold,
)


def evaluate(
    policies: list[dict[str, Any]],
    report: Report,
    *,
    regressions: Callable[[NoRegression], list[str]],
) -> PolicyResult:
    """Every rule of every policy; one reason per failed rule. `regressions` tests a
    no-regression rule against its baseline and returns the reasons it fails."""
    summary = report.summary.all
    verdicts = []
    for policy in policies:
        rules = PolicyRules.model_validate(policy["rules"])
        reasons = [r for rule in rules.thresholds if (r := _threshold(rule, summary))]
        if rules.no_regression is not None:
            reasons += regressions(rules.no_regression)
        verdicts.append(
            PolicyVerdict(
                name=policy["name"], status="failed" if reasons else "passed", reasons=reasons
            )
        )
    failed = any(v.status == "failed" for v in verdicts)
    return PolicyResult(status="failed" if failed else "passed", policies=verdicts)


def metric_value(summary: Summary, metric: Metric) -> float | None:
    """A summary metric's value, or a drop derived from two; None when not defined."""

    def value(name: str) -> float | None:
        estimate = getattr(summary, name)
        return None if estimate is None else float(estimate.value)

    if metric.endswith("_drop"):
        shifted = value(metric.removesuffix("_drop"))
        accuracy = value("accuracy")
        return None if shifted is None or accuracy is None else accuracy - shifted
    return value(metric)


def _threshold(rule: Threshold, summary: Summary) -> str | None:
    value = metric_value(summary, rule.metric)
    if value is None:
        return (
            f"{rule.metric} is not defined for this audit (it needs labels or an exhaustive sweep)"
        )
    passed = value >= rule.value if rule.op == ">=" else value <= rule.value
    return None if passed else f"{rule.metric} is {value:.4g}, required {rule.op} {rule.value:g}"
