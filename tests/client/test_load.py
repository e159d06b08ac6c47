"""A short run of the load test (benchmarks/load_test.py): concurrent pipelines and dashboards
against a live service lose nothing and see no errors. Its figures are measured with longer
runs (docs/service.md); here only correctness is asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

LOAD_TEST = Path(__file__).parents[2] / "benchmarks" / "load_test.py"


def test_concurrent_pipelines_and_dashboards_lose_nothing(tmp_path):
    out = tmp_path / "load.json"
    args = ["--pipelines", "4", "--dashboards", "4", "--duration", "15", "--out", str(out)]
    run = subprocess.run(
        [sys.executable, str(LOAD_TEST), *args],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["errors"] == 0, result["error_samples"]
    assert result["audits_submitted"] >= 4  # every pipeline queued at least one
    assert result["audits_by_status"] == {"succeeded": result["audits_submitted"]}
    assert result["nothing_lost"]
    assert result["by_kind"]["get_report"]["requests"] > 0  # dashboards read reports
