"""`shiftaudit serve` and `shiftaudit demo` as a newcomer runs them: real processes, HTTP."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.postgres import ADMIN_URL

from .loopback import free_port


def _cli(*args: str, env: dict[str, str], timeout: float = 300):
    return subprocess.run(
        [sys.executable, "-m", "shiftaudit.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DATABASE_URL", "REDIS_URL", "SHIFTAUDIT_DATABASE_URL")
    }
    return {**env, **extra}


def test_demo_runs_the_main_job_over_http(tmp_path):
    result = _cli(
        "demo", "--data-dir", str(tmp_path / "data"), "--port", str(free_port()), env=_env()
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "consistency" in result.stdout
    assert "81 shifts, 12 probes" in result.stdout
    assert (tmp_path / "data" / "shiftaudit.db").exists()


def test_serve_refuses_a_database_behind_the_migrations(tmp_path):
    unmigrated = _cli("serve", env=_env(DATABASE_URL=ADMIN_URL, SHIFTAUDIT_DATA_DIR=str(tmp_path)))
    assert unmigrated.returncode == 2
    assert "alembic upgrade head" in unmigrated.stderr
