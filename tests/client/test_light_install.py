"""The client as a CI job installs it: a fresh virtualenv with only the light core, then
`shiftaudit submit --wait` from it against a live service, judged by its exit status."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from shiftaudit_client.cli import Exit

from .conftest import CONFIG
from .test_submit import gate  # noqa: F401 (fixture)

ROOT = Path(__file__).resolve().parents[2]
HEAVY = {
    "torch",
    "onnx",
    "onnxruntime",
    "numpy",
    "pillow",
    "sqlalchemy",
    "alembic",
    "fastapi",
    "starlette",
    "uvicorn",
    "celery",
    "boto3",
    "plotly",
}
_NOT_SOURCE = shutil.ignore_patterns(
    ".venv", ".git", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", "tests"
)


@pytest.fixture(scope="module")
def light(tmp_path_factory) -> Path:
    """A new virtualenv where `pip install <checkout>` (docs/client.md) has run: its bin/."""
    root = tmp_path_factory.mktemp("light")
    checkout = root / "checkout"
    shutil.copytree(ROOT, checkout, ignore=_NOT_SOURCE)  # the build writes into its tree
    subprocess.run([sys.executable, "-m", "venv", str(root / "venv")], check=True, timeout=120)
    bin_dir = root / "venv" / "bin"
    installed = subprocess.run(
        [bin_dir / "python", "-m", "pip", "install", "--quiet", str(checkout)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert installed.returncode == 0, installed.stderr[-3000:]
    return bin_dir


def test_the_light_install_has_the_client_and_nothing_heavy(light):
    listed = subprocess.run(
        [light / "python", "-m", "pip", "list", "--format", "json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    names = {package["name"].lower() for package in json.loads(listed.stdout)}
    assert {"shiftaudit", "httpx", "pydantic"} <= names
    assert names & HEAVY == set()


def test_an_engine_command_says_what_to_install(light):
    result = subprocess.run(
        [light / "shiftaudit", "audit", "model.onnx", "probes"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2
    assert "pip install 'shiftaudit[engine]'" in result.stderr


def _submit(light: Path, served, model: Path, probes: Path, config: Path):
    env = {k: v for k, v in served.env.items() if k != "VIRTUAL_ENV"}
    env["PATH"] = f"{light}{os.pathsep}{env.get('PATH', '')}"
    command = [light / "shiftaudit", "submit", model, probes, "--config", config]
    return subprocess.run(
        [*command, "--policy", "gate", "--wait", "--timeout", "240"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_submit_from_the_light_install_gates_a_model(light, served, inputs, gate):  # noqa: F811
    passed = _submit(light, served, inputs["invariant"], inputs["probes"], gate)
    assert passed.returncode == Exit.OK, passed.stderr
    assert "policy: passed (gate)" in passed.stdout
    failed = _submit(light, served, inputs["aliasing"], inputs["probes"], gate)
    assert failed.returncode == Exit.POLICY_FAILED, failed.stderr
    assert "policy: FAILED" in failed.stdout
    assert CONFIG["sweep"]["mode"] in failed.stdout  # the summary, printed by the light client
