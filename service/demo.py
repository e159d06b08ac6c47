"""`shiftaudit demo`: the main job end to end over HTTP on the embedded default.

Starts `shiftaudit serve` (SQLite and local storage in a fresh data directory, its log in a
file there), issues an API key, uploads the bundled example model and probe set, queues an
audit, follows it with one progress bar, prints the report's summary, stops the server and
says how to look at the audit in the dashboard.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx

from shiftaudit.config import AuditConfig
from shiftaudit.errors import ShiftAuditError
from shiftaudit.report import Report
from shiftaudit.terminal import ProgressBar, format_summary
from shiftaudit_api.audits import AuditOut
from shiftaudit_client import Client, api

_CONFIG = {"sweep": {"mode": "circular", "max_shift": 4}}
CLI = [sys.executable, "-m", "shiftaudit_cli"]


def configure_demo(demo: argparse.ArgumentParser) -> None:
    """`demo`: the example audit through the REST service."""
    demo.add_argument("--data-dir", type=Path, default=Path("build/demo-data"))
    demo.add_argument("--port", type=int, default=8765)
    demo.set_defaults(handler=_demo)


def _demo(args: argparse.Namespace) -> int:
    from shiftaudit.examples import write_example

    shutil.rmtree(args.data_dir, ignore_errors=True)
    model, probes = write_example(args.data_dir / "example")
    archive = shutil.make_archive(str(args.data_dir / "probes"), "zip", probes)
    env = {**os.environ, "SHIFTAUDIT_DATA_DIR": str(args.data_dir)}
    for name in ("DATABASE_URL", "REDIS_URL", "SHIFTAUDIT_DATABASE_URL", "SHIFTAUDIT_STORAGE_URL"):
        env.pop(name, None)
    key = issue_key(env, team="demo", scope="write")
    log_path = args.data_dir / "server.log"
    base = f"http://127.0.0.1:{args.port}"
    print(f"serving on {base} (log: {log_path})", file=sys.stderr)
    with log_path.open("wb") as log:
        server = subprocess.Popen(
            [*CLI, "serve", "--port", str(args.port), "--no-access-log"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            with httpx.Client(base_url=base) as http:
                wait_ready(http, server)
            with Client(base, key) as client:
                audit_id, report = _audit(client, model, Path(archive))
        finally:
            server.terminate()
            server.wait(timeout=30)
    print(format_summary(report))
    shiftaudit = _command_name()
    where = f"SHIFTAUDIT_DATA_DIR={args.data_dir}"
    print(
        f"\nNext, browse this audit in the dashboard:\n"
        f"  {where} {shiftaudit} serve\n"
        f"  open http://127.0.0.1:8000/ui/audits/{audit_id}\n"
        f"  and sign in with a key from:\n"
        f"  {where} {shiftaudit} keys create --team demo --scope read"
    )
    return 0


def _command_name() -> str:
    """How the user ran `shiftaudit` (a venv's path, say), to print commands that work."""
    invoked = Path(sys.argv[0])
    return str(invoked) if invoked.name == "shiftaudit" else "shiftaudit"


def issue_key(env: dict[str, str], *, team: str, scope: str) -> str:
    """A new API key from `shiftaudit keys create`, run with `env` (its database)."""
    created = subprocess.run(
        [*CLI, "keys", "create", "--team", team, "--scope", scope],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    return next(line.split()[-1] for line in created.stdout.splitlines() if line.startswith("key:"))


def wait_ready(http: httpx.Client, server: subprocess.Popen[bytes]) -> None:
    """Poll /readyz of a server process just started, until 200 (60 s at most)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise ShiftAuditError("the server exited before it became ready")
        try:
            if http.get("/readyz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise ShiftAuditError("the server did not become ready within 60 s")


def _audit(client: Client, model: Path, probes: Path) -> tuple[str, Report]:
    model_id = client.send(api.upload_model(model, name="example")).id
    probe_set_id = client.send(api.upload_probe_set(probes, name="photos")).id
    config = AuditConfig.model_validate(_CONFIG)
    audit = client.send(
        api.create_audit(model_id=model_id, probe_set_id=probe_set_id, config=config)
    )
    print(f"audit {audit.id} queued", file=sys.stderr)
    bar = ProgressBar(sys.stderr)

    def show(update: AuditOut) -> None:
        bar(update.progress, update.status.value)

    audit = client.wait(audit.id, poll_s=0.5, on_update=show)
    bar.close()
    if audit.status != "succeeded":
        raise ShiftAuditError(f"the audit {audit.status}: {audit.error}")
    return str(audit.id), client.send(api.get_report(audit.id))
