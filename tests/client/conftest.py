"""A live service for client tests: `shiftaudit serve` on the embedded default, over HTTP."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from service.demo import issue_key, wait_ready
from tests.nets import GlobalPoolNet, export_program, phase_probes
from tests.workers.conftest import free_port

CONFIG = {
    "preprocess": {"input_size": [16, 16], "resize": 16},
    "sweep": {"mode": "circular", "max_shift": 2},
    "runtime": {"batch_size": 25, "device": "cpu"},
    "bootstrap": 100,
}


@dataclass
class Served:
    url: str
    key: str
    env: dict[str, str]
    """The environment for `shiftaudit` commands that talk to this service."""
    admin_key: str = ""
    """The same team's admin key: policies, webhooks and hook settings take one."""


def service_environment(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHIFTAUDIT_")}
    for name in ("DATABASE_URL", "REDIS_URL"):
        env.pop(name, None)
    return env | {"SHIFTAUDIT_DATA_DIR": str(data_dir)}


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[Served]:
    data_dir = tmp_path_factory.mktemp("served")
    env = service_environment(data_dir)
    key = issue_key(env, team="pipelines", scope="write")
    admin_key = issue_key(env, team="pipelines", scope="admin")
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "shiftaudit_cli", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=url) as http:
            wait_ready(http, server)
        yield Served(url, key, env | {"SHIFTAUDIT_URL": url, "SHIFTAUDIT_API_KEY": key}, admin_key)
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    """Model files and a probe directory with known behaviour (tests/nets.py)."""
    root = tmp_path_factory.mktemp("inputs")
    return {
        "invariant": export_program(GlobalPoolNet(stride=1), root / "invariant.pt2"),
        "aliasing": export_program(GlobalPoolNet(stride=2), root / "aliasing.pt2"),
        "probes": phase_probes(root / "probes", 12),
    }
