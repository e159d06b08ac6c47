"""`shiftaudit serve` and `shiftaudit demo` as a newcomer runs them: real processes, HTTP."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from tests.postgres import fresh_database

from .loopback import free_port


def _cli(*args: str, env: dict[str, str], timeout: float = 300):
    return subprocess.run(
        [sys.executable, "-m", "shiftaudit_cli", *args],
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
    # It reads like a product: no access log, one progress bar (ten steps at most when not
    # a terminal), and where to look next.
    assert "HTTP/1.1" not in result.stdout + result.stderr
    progress = [
        line
        for line in result.stderr.splitlines()
        if line.rstrip().endswith(("%", "running", "queued", "succeeded"))
    ]
    assert len(progress) <= 11, progress
    audit_id = re.search(r"audit (\S+) queued", result.stderr).group(1)
    assert f"/ui/audits/{audit_id}" in result.stdout
    assert "keys create --team demo --scope read" in result.stdout


def test_serve_refuses_a_database_behind_the_migrations_until_migrate_runs(tmp_path):
    with fresh_database() as url:
        env = _env(DATABASE_URL=url, SHIFTAUDIT_DATA_DIR=str(tmp_path))
        unmigrated = _cli("serve", env=env)
        assert unmigrated.returncode == 2
        assert "run `shiftaudit migrate`" in unmigrated.stderr
        migrated = _cli("migrate", env=env)
        assert migrated.returncode == 0, migrated.stderr
        assert _cli("migrate", "--check", env=env).returncode == 0
