"""`shiftaudit submit` as a CI job runs it: a real process against a live service, judged by
its exit status."""

from __future__ import annotations

import json

import httpx
import pytest
import torch

from shiftaudit_client.cli import Exit
from tests.nets import GlobalPoolNet
from tests.service.test_serve import _cli
from tests.workers.conftest import free_port

from .conftest import CONFIG


@pytest.fixture(scope="module")
def gate(served, tmp_path_factory):
    """A policy the stride-1 net passes and the stride-2 net fails, and the sweep's config."""
    response = httpx.post(
        f"{served.url}/v1/policies",
        headers={"Authorization": f"Bearer {served.admin_key}"},
        json={"name": "gate", "thresholds": [{"metric": "consistency", "op": ">=", "value": 0.99}]},
    )
    assert response.status_code == 201, response.text
    config = tmp_path_factory.mktemp("config") / "config.json"
    config.write_text(json.dumps(CONFIG))
    return config


def test_a_model_that_passes_the_policy_exits_0_with_the_summary(served, inputs, gate):
    args = ["submit", str(inputs["invariant"]), str(inputs["probes"]), "--config", str(gate)]
    result = _cli(*args, "--policy", "gate", "--wait", "--timeout", "240", env=served.env)
    assert result.returncode == Exit.OK, result.stderr
    assert "consistency" in result.stdout
    assert "policy: passed (gate)" in result.stdout
    audit_id = result.stdout.splitlines()[0].rsplit("/", 1)[-1]
    assert f"report: {served.url}/ui/audits/{audit_id}" in result.stdout
    assert httpx.get(f"{served.url}/ui/audits/{audit_id}").status_code == 200
    assert "model" in result.stderr
    assert "uploaded" in result.stderr

    again = _cli(*args, "--policy", "gate", env=served.env)
    assert again.returncode == Exit.OK, again.stderr
    assert "already on the server" in again.stderr  # neither file was sent again
    assert "uploaded" not in again.stderr
    assert "reused" in again.stderr  # the same request: the succeeded audit is returned


def test_a_model_that_fails_the_policy_exits_1_with_the_reason(served, inputs, gate):
    args = ["submit", str(inputs["aliasing"]), str(inputs["probes"]), "--config", str(gate)]
    result = _cli(*args, "--policy", "gate", "--wait", env=served.env)
    assert result.returncode == Exit.POLICY_FAILED, result.stderr
    assert "policy: FAILED" in result.stdout
    assert "gate: consistency" in result.stdout


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"model": "missing.onnx"}, "no such file or directory"),
        ({"config": '{"sweep": {"mode": "sideways"}}'}, "invalid config: sweep.mode"),
        ({"policy": "no-such-policy"}, "no-such-policy"),
        ({"model": "probes/phase0000.png"}, "/v1/models: 422"),
    ],
)
def test_bad_input_exits_2_with_one_line_naming_the_problem(
    served, inputs, gate, tmp_path, change, message
):
    model = str(inputs["invariant"])
    if "model" in change:
        model = str(inputs["probes"].parent / change["model"])
    config = gate
    if "config" in change:
        config = tmp_path / "bad.json"
        config.write_text(change["config"])
    policy = change.get("policy", "gate")
    args = ["submit", model, str(inputs["probes"]), "--config", str(config), "--policy", policy]
    result = _cli(*args, "--wait", env=served.env)
    assert result.returncode == Exit.BAD_INPUT, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("shiftaudit: error")]
    assert len(errors) == 1
    assert message in errors[0]


def test_an_unreachable_service_exits_5(served, inputs, gate):
    env = served.env | {"SHIFTAUDIT_URL": f"http://127.0.0.1:{free_port()}"}
    args = ["submit", str(inputs["invariant"]), str(inputs["probes"]), "--config", str(gate)]
    result = _cli(*args, "--wait", env=env, timeout=120)
    assert result.returncode == Exit.UNAVAILABLE, result.stderr
    assert "the service is unavailable (ConnectError" in result.stderr


def test_a_wait_that_runs_out_exits_4_and_the_audit_goes_on(served, inputs, gate, tmp_path):
    config = tmp_path / "seed.json"
    config.write_text(json.dumps({**CONFIG, "seed": 11}))  # a new request: not reused
    args = ["submit", str(inputs["invariant"]), str(inputs["probes"]), "--config", str(config)]
    result = _cli(*args, "--wait", "--timeout", "0", env=served.env)
    assert result.returncode == Exit.TIMED_OUT, result.stderr
    assert "still" in result.stderr


def test_report_and_compare_print_what_the_service_stored(served, inputs, gate, tmp_path):
    runs = []
    for model in ("invariant", "aliasing"):
        args = ["submit", str(inputs[model]), str(inputs["probes"]), "--config", str(gate)]
        result = _cli(*args, "--wait", env=served.env)
        assert result.returncode == Exit.OK, result.stderr
        runs.append(result.stdout.splitlines()[0].rsplit("/", 1)[-1])

    report = _cli("report", runs[1], "--format", "json", env=served.env)
    assert report.returncode == 0, report.stderr
    stored = httpx.get(
        f"{served.url}/v1/audits/{runs[1]}/report",
        headers={"Authorization": f"Bearer {served.key}"},
    ).json()
    assert json.loads(report.stdout) == stored

    compared = _cli("compare", *runs, env=served.env)
    assert compared.returncode == 0, compared.stderr
    assert f"{runs[1]} against {runs[0]}: paired" in compared.stdout
    consistency = next(line for line in compared.stdout.splitlines() if "consistency" in line)
    assert consistency.split()[1] == "1.0000"  # the stride-1 baseline is invariant
    assert consistency.endswith("significant")

    html = tmp_path / "report.html"
    exported = _cli("report", runs[1], "--format", "html", "--out", str(html), env=served.env)
    assert exported.returncode == 0, exported.stderr
    assert runs[1] in html.read_text()

    missing = _cli("report", "00000000-0000-0000-0000-000000000000", env=served.env)
    assert missing.returncode == Exit.BAD_INPUT
    assert "404" in missing.stderr


def test_submit_gives_a_traced_model_its_input_size(served, inputs, gate, tmp_path):
    traced = tmp_path / "traced.ts"
    torch.jit.trace(GlobalPoolNet(stride=1).eval(), torch.randn(2, 3, 16, 16)).save(str(traced))
    args = ["submit", str(traced), str(inputs["probes"]), "--config", str(gate)]
    result = _cli(*args, "--input-size", "16", "16", "--policy", "gate", "--wait", env=served.env)
    assert result.returncode == Exit.OK, result.stderr
    assert "input 16x16" in result.stdout


def test_submit_estimate_prints_the_cost_and_queues_nothing(served, inputs, gate):
    args = ["submit", str(inputs["aliasing"]), str(inputs["probes"]), "--config", str(gate)]
    listed = httpx.get(
        f"{served.url}/v1/audits", headers={"Authorization": f"Bearer {served.key}"}
    ).json()
    result = _cli(*args, "--estimate", env=served.env)
    assert result.returncode == Exit.OK, result.stderr
    # 12 probes x 25 shifts (max_shift 2), and the layer profile on 4 of them.
    assert "estimate: " in result.stdout
    assert "(300 for the sweep: 12 probes x 25, " in result.stdout
    assert "allowed" in result.stdout
    again = httpx.get(
        f"{served.url}/v1/audits", headers={"Authorization": f"Bearer {served.key}"}
    ).json()
    assert again["items"] == listed["items"]  # nothing was queued
