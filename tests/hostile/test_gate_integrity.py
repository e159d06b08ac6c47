"""A gate that cannot be fooled: every float finite and every limit the engine enforces
checked when the audit is created (422 naming the field), at the API, in the CLI's
--config and in hook defaults. Each of these was accepted before (202, or 0 exit)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from fastapi.testclient import TestClient

from shiftaudit.config import AuditConfig
from shiftaudit.engine import run_audit
from shiftaudit.errors import ModelError
from tests.nets import GlobalPoolNet, UnfiniteNet, export_program, phase_probes, zip_directory
from tests.service.conftest import record_audits
from tests.service.test_audits_api import _auth, _wait

# Python's json writes NaN and Infinity as JSON's non-standard tokens, as a hostile client.
BAD_CONFIGS = [
    ({"preprocess": {"mean": [float("nan"), 0.4, 0.4]}}, "preprocess.mean.0", "finite"),
    ({"preprocess": {"std": [0.2, float("inf"), 0.2]}}, "preprocess.std.1", "finite"),
    ({"preprocess": {"value_scale": float("inf")}}, "preprocess.value_scale", "finite"),
    ({"sweep": {"shifts": [[float("nan"), 1.0]]}}, "sweep.shifts.0.0", "finite"),
    ({"seed": -5}, "seed", "greater than or equal to 0"),
    ({"preprocess": {"resize": 1_000_000_000}}, "preprocess.resize", "less than or equal"),
    ({"sweep": {"shifts": [[0, i % 60 + 1] for i in range(5000)]}}, "sweep.shifts", "4096"),
    ({"sweep": {"max_shift": 40}}, "sweep", "more than the 4096"),
    ({"sweep": {"shifts": [[600, 0]]}}, "sweep.shifts.0.0", "less than or equal to 512"),
]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("gate")
    return {
        "model": export_program(GlobalPoolNet(), root / "m.pt2").read_bytes(),
        "wide": export_program(GlobalPoolNet(), root / "w.pt2", size=96).read_bytes(),
        "probes": zip_directory(phase_probes(root / "p", 4)),
    }


@pytest.fixture
def service(app_and_keys, files):
    """An app that queues nothing (audits stay queued), with one model and probe set."""
    app, keys = app_and_keys
    record_audits(app)
    client = TestClient(app)
    write = _auth(keys, "alpha-write")

    def upload(path: str, name: str, payload: bytes) -> str:
        answer = client.post(
            path, headers=write, data={"name": name}, files={"file": ("f", payload)}
        )
        assert answer.status_code == 201, answer.text
        return str(answer.json()["id"])

    ids = {
        "model": upload("/v1/models", "m", files["model"]),
        "wide": upload("/v1/models", "w", files["wide"]),
        "probes": upload("/v1/probe-sets", "p", files["probes"]),
    }
    return client, write, ids, app, _auth(keys, "alpha-admin")


def _send(client, headers, path, body, method="POST"):
    # json.dumps writes NaN/Infinity literally (allow_nan), as a hostile client would.
    return client.request(
        method,
        path,
        headers={**headers, "Content-Type": "application/json"},
        content=json.dumps(body),
    )


@pytest.mark.parametrize(("config", "field", "why"), BAD_CONFIGS)
def test_an_audit_with_a_bad_config_is_refused_naming_the_field(service, config, field, why):
    client, write, ids, app, _ = service
    body = {"model_id": ids["model"], "probe_set_id": ids["probes"], "config": config}
    answer = _send(client, write, "/v1/audits", body)
    assert answer.status_code == 422, answer.text
    assert f"config.{field}" in answer.json()["detail"]
    assert why in answer.json()["detail"]
    assert app.state.queue.enqueued == []


@pytest.mark.parametrize(("config", "field", "why"), BAD_CONFIGS)
def test_hook_defaults_with_a_bad_config_are_refused(service, config, field, why):
    client, _, ids, _, admin = service
    body = {"probe_set_id": ids["probes"], "config": config}
    answer = _send(client, admin, "/v1/hooks/defaults", body, method="PUT")
    assert answer.status_code == 422, answer.text
    assert f"config.{field}" in answer.json()["detail"]


def test_a_non_finite_policy_threshold_and_a_dot_name_are_refused(service):
    client, _, _, _, admin = service
    nan = {
        "name": "gate",
        "thresholds": [{"metric": "consistency", "op": ">=", "value": float("nan")}],
    }
    answer = _send(client, admin, "/v1/policies", nan)
    assert answer.status_code == 422, answer.text
    assert "thresholds.0.value" in answer.json()["detail"]
    for name in ("..", ".", ".hidden"):
        dotted = _send(client, admin, "/v1/policies", {"name": name})
        assert dotted.status_code == 422, (name, dotted.text)
        assert "name" in dotted.json()["detail"]


def test_a_canvas_that_does_not_fit_the_declared_input_is_refused_at_create(service):
    """The model file declares 96x96 (read from its graph, never run): a canvas of every
    position at step 1 has 6561 of them, more than an exhaustive sweep takes."""
    client, write, ids, app, _ = service
    canvas = {"sweep": {"mode": "canvas", "object_size": 16, "step": 1}}
    body = {"model_id": ids["wide"], "probe_set_id": ids["probes"], "config": canvas}
    answer = _send(client, write, "/v1/audits", body)
    assert answer.status_code == 422, answer.text
    assert "6561 positions" in answer.json()["detail"]
    resized = {"preprocess": {"resize": 32}}  # below the declared 96: nothing to crop
    body = {"model_id": ids["wide"], "probe_set_id": ids["probes"], "config": resized}
    smaller = _send(client, write, "/v1/audits", body)
    assert smaller.status_code == 422, smaller.text
    assert "smaller than the input size (96, 96)" in smaller.json()["detail"]
    assert app.state.queue.enqueued == []


@pytest.mark.parametrize(("config", "field", "why"), BAD_CONFIGS[:5])
def test_the_cli_refuses_a_bad_config_file_naming_the_field(tmp_path, config, field, why):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "shiftaudit_cli",
            "audit",
            "model.pt2",
            str(tmp_path),
            "--config",
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2
    assert f"invalid config: {field}" in result.stderr
    assert why in result.stderr


def test_the_engine_refuses_to_report_on_nan_outputs(tmp_path):
    """Before, NaN logits gave consistency 1.0 and passed a consistency gate."""
    model = export_program(UnfiniteNet(), tmp_path / "nan.pt2")
    probes = phase_probes(tmp_path / "probes", 3)
    config = AuditConfig.model_validate({"preprocess": {"resize": 16}, "sweep": {"max_shift": 1}})
    with pytest.raises(ModelError, match=r"NaN or Inf \(probe phase0000.png at shift \(-1, -1\)\)"):
        run_audit(model, probes, config)


def test_an_audit_of_a_nan_model_fails_with_the_reason(app_and_keys, tmp_path):
    app, keys = app_and_keys
    client = TestClient(app)
    write = _auth(keys, "alpha-write")
    model = export_program(UnfiniteNet(), tmp_path / "nan.pt2").read_bytes()
    model_id = client.post(
        "/v1/models", headers=write, data={"name": "nan"}, files={"file": ("m", model)}
    ).json()["id"]
    probes = zip_directory(phase_probes(tmp_path / "probes", 3))
    probe_set_id = client.post(
        "/v1/probe-sets", headers=write, data={"name": "p"}, files={"file": ("p", probes)}
    ).json()["id"]
    body = {
        "model_id": model_id,
        "probe_set_id": probe_set_id,
        "config": {"preprocess": {"resize": 16}, "sweep": {"max_shift": 1}},
        "policies": [],
    }
    created = client.post("/v1/audits", headers=write, json=body)
    assert created.status_code == 202, created.text
    audit = _wait(client, keys, created.json()["id"])
    assert audit["status"] == "failed"
    assert "the model's outputs contain NaN or Inf" in audit["error"]
    assert audit["consistency"] is None
