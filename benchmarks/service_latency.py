"""Service latency on loopback: report and list reads with many stored audits, model uploads.

    python benchmarks/service_latency.py [--audits 100000] [--requests 2000] [--out FILE]

Starts `uvicorn service.app:create_app` (one process, SQLite or DATABASE_URL) on a free
loopback port, stores N finished audits with reports directly in the database, then drives a
bounded async load generator (fixed request count, fixed concurrency): GET one audit's report,
GET the first page of the audit list, and uploads of a 50 MB model. Prints p50/p99 latency and
throughput as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from sqlalchemy import insert

from service.audits.tables import Audit, AuditReport
from service.db import make_engine, session_factory, utcnow
from service.demo import wait_ready
from service.migrate import upgrade
from service.models.tables import ModelFile
from service.probe_sets.tables import ProbeSetFile
from service.teams.repository import create_key, get_or_create_team
from service.teams.tables import Scope
from shiftaudit.config import AuditConfig
from shiftaudit.engine import run_audit
from shiftaudit.examples import write_example
from shiftaudit_api.audits import AuditStatus

PEPPER = "benchmark-pepper-" + "x" * 32


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def big_onnx(path: Path, megabytes: int, seed: int) -> Path:
    """A valid ONNX classifier (global pooling + dense) padded with a large initializer."""
    rng = np.random.default_rng(seed)
    weights = rng.standard_normal((3, 10)).astype(np.float32)
    ballast = rng.standard_normal(megabytes * 1024 * 1024 // 4).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["flat"]),
            helper.make_node("MatMul", ["flat", "weights"], ["logits"]),
        ],
        "big",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        initializer=[
            numpy_helper.from_array(weights, "weights"),
            numpy_helper.from_array(ballast, "ballast"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, path)
    return path


def example_report(work: Path) -> dict[str, object]:
    """A real report (the bundled example, 81 shifts, 12 probes) to store N times."""
    model, probes = write_example(work / "example")
    config = AuditConfig.model_validate({"sweep": {"max_shift": 4}})
    report: dict[str, object] = run_audit(model, probes, config).model_dump(mode="json")
    return report


def seed_audits(url: str, count: int, report: dict[str, object]) -> tuple[str, uuid.UUID]:
    """A team with a key, one model, one probe set and `count` finished audits with reports."""
    engine = make_engine(url)
    with session_factory(engine).begin() as session:
        team = get_or_create_team(session, name="bench")
        _, key = create_key(session, team=team, scope=Scope.WRITE, pepper=PEPPER)
        model = ModelFile(
            team_id=team.id, name="m", version="1", format="onnx", sha256="0" * 64, size_bytes=1
        )
        probes = ProbeSetFile(
            team_id=team.id,
            name="p",
            sha256="1" * 64,
            size_bytes=1,
            image_count=1,
            labelled=False,
            label_summary={},
        )
        session.add_all([model, probes])
        session.flush()
        team_id, model_id, probes_id = team.id, model.id, probes.id
    now = utcnow()
    batch = 10_000
    last = uuid.uuid4()
    with engine.begin() as connection:
        for start in range(0, count, batch):
            ids = [uuid.uuid4() for _ in range(min(batch, count - start))]
            connection.execute(
                insert(Audit),
                [
                    {
                        "id": i,
                        "created_at": now,
                        "team_id": team_id,
                        "model_id": model_id,
                        "probe_set_id": probes_id,
                        "config": {},
                        "status": AuditStatus.SUCCEEDED,
                        "progress": 1.0,
                        "consistency": 0.9,
                        "flip_rate": 0.05,
                    }
                    for i in ids
                ],
            )
            connection.execute(
                insert(AuditReport), [{"audit_id": i, "report": report} for i in ids]
            )
            last = ids[-1]
    engine.dispose()
    return key, last


async def drive(
    client: httpx.AsyncClient, method: str, path: str, *, requests: int, concurrency: int
) -> dict[str, float]:
    latencies: list[float] = []
    queue = iter(range(requests))

    async def worker() -> None:
        for _ in queue:
            start = time.perf_counter()
            response = await client.request(method, path)
            latencies.append(time.perf_counter() - start)
            if response.status_code >= 400:
                raise RuntimeError(f"{path}: {response.status_code} {response.text[:200]}")

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - began
    ordered = sorted(latencies)
    return {
        "requests": len(latencies),
        "p50_ms": 1000 * statistics.median(ordered),
        "p99_ms": 1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
        "per_s": len(latencies) / elapsed,
    }


async def run(
    base: str, key: str, audit_id: uuid.UUID, args: argparse.Namespace, work: Path
) -> dict[str, object]:
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=300) as client:
        load = {"requests": args.requests, "concurrency": args.concurrency}
        report = await drive(client, "GET", f"/v1/audits/{audit_id}/report", **load)
        listing = await drive(client, "GET", "/v1/audits?limit=50", **load)
        uploads = []
        for seed in range(args.uploads):
            path = big_onnx(work / f"big{seed}.onnx", 50, seed)
            body = path.read_bytes()
            start = time.perf_counter()
            response = await client.post(
                "/v1/models", data={"name": f"big{seed}"}, files={"file": (path.name, body)}
            )
            uploads.append(time.perf_counter() - start)
            if response.status_code != 201:
                raise RuntimeError(f"upload: {response.status_code} {response.text[:200]}")
    return {
        "get_report": report,
        "list_audits_first_page": listing,
        "upload_50mb_model": {
            "uploads": len(uploads),
            "median_s": statistics.median(uploads),
            "uploads_per_s": 1 / statistics.median(uploads),
            "mb_per_s": 50 / statistics.median(uploads),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--audits", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--uploads", type=int, default=5)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="shiftaudit-svc-bench-"))
    url = os.environ.get("DATABASE_URL") or f"sqlite:///{work / 'bench.db'}"
    upgrade(url)
    report = example_report(work)
    key, audit_id = seed_audits(url, args.audits, report)
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "SHIFTAUDIT_DATA_DIR": str(work),
        "SHIFTAUDIT_SECRET_KEY": PEPPER,
    }
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            "service.app:create_app",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        env=env,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base) as http:
            wait_ready(http, server)
        results = asyncio.run(run(base, key, audit_id, args, work))
    finally:
        server.terminate()
        server.wait(timeout=30)
    results = {
        "database": url.split(":", 1)[0],
        "stored_audits": args.audits,
        "report_bytes": len(json.dumps(report)),
        "concurrency": args.concurrency,
        "server": "uvicorn, 1 process",
        **results,
    }
    print(json.dumps(results, indent=2))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
