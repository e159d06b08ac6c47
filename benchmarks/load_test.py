"""A bounded load test on loopback: CI pipelines submitting and polling while dashboards read.

    python benchmarks/load_test.py [--pipelines 8] [--dashboards 8] [--duration 120] [--out F]

Starts `shiftaudit serve` on the embedded default (SQLite, local storage, the embedded runner;
DATABASE_URL for PostgreSQL) on a free loopback port and drives it with the async client
(`shiftaudit_client.AsyncClient`, retries off so that every 429/5xx counts) for a fixed
duration:

- each pipeline loops: upload the model and the probe set (deduplicated by the server after
  the first), queue an audit with a fresh seed (a new request, never reused), poll it every
  second until it finishes;
- each dashboard loops, for as long as the pipelines run: list the newest audits, fetch one
  finished audit and its report, and the model's trend.

After the duration no new audits are queued; the queued ones drain (bounded by --drain).
Then every audit the pipelines were told about is read back: nothing lost means each exists
and succeeded, and the team's audit list holds exactly those. Prints JSON: requests, errors,
latency percentiles per request kind, audits submitted and completed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx

from service.demo import issue_key, wait_ready
from service.migrate import upgrade
from shiftaudit.config import AuditConfig
from shiftaudit.examples import write_example
from shiftaudit_client import ApiError, AsyncClient, RetryPolicy, ServiceUnavailable, api

T = TypeVar("T")
CONFIG = {"sweep": {"mode": "circular", "max_shift": 2}, "bootstrap": 200}


class Recorder:
    """Latency and outcome of every request, by kind."""

    def __init__(self) -> None:
        self.latencies: dict[str, list[float]] = defaultdict(list)
        self.errors: dict[str, list[str]] = defaultdict(list)

    async def timed(self, kind: str, request: Awaitable[T]) -> T | None:
        started = time.perf_counter()
        try:
            result = await request
        except (ApiError, ServiceUnavailable) as error:
            self.errors[kind].append(str(error)[:200])
            return None
        finally:
            self.latencies[kind].append(time.perf_counter() - started)
        return result

    def summary(self) -> dict[str, Any]:
        kinds = {}
        for kind, values in sorted(self.latencies.items()):
            ordered = sorted(values)

            def at(q: float, ordered: list[float] = ordered) -> float:
                return round(1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)

            kinds[kind] = {
                "requests": len(ordered),
                "errors": len(self.errors[kind]),
                "p50_ms": at(0.50),
                "p95_ms": at(0.95),
                "p99_ms": at(0.99),
                "max_ms": round(1000 * ordered[-1], 1),
            }
        total = sum(len(v) for v in self.latencies.values())
        failed = sum(len(v) for v in self.errors.values())
        return {
            "requests": total,
            "errors": failed,
            "error_rate": failed / total if total else 0.0,
            "by_kind": kinds,
            "error_samples": {k: v[:3] for k, v in self.errors.items() if v},
        }


async def pipeline(
    client: AsyncClient,
    record: Recorder,
    files: dict[str, Path],
    stop_at: float,
    seeds: Callable[[], int],
    submitted: list[uuid.UUID],
) -> None:
    """A CI job, over and over: upload, queue, poll to the end."""
    while time.monotonic() < stop_at:
        model = await record.timed(
            "upload_model", client.send(api.upload_model(files["model"], name="example"))
        )
        probes = await record.timed(
            "upload_probe_set", client.send(api.upload_probe_set(files["probes"], name="photos"))
        )
        if model is None or probes is None:
            await asyncio.sleep(1)
            continue
        config = AuditConfig.model_validate({**CONFIG, "seed": seeds()})
        call = api.create_audit(
            model_id=model.id, probe_set_id=probes.id, config=config, reuse=False
        )
        audit = await record.timed("create_audit", client.send(call))
        if audit is None:
            continue
        submitted.append(audit.id)
        while audit is None or not audit.status.finished:
            await asyncio.sleep(1)
            audit = await record.timed("poll_audit", client.send(api.get_audit(audit.id)))


async def dashboard(client: AsyncClient, record: Recorder, stop: asyncio.Event) -> None:
    """A team dashboard refreshing: the newest audits, one report, the model's trend."""
    rng = random.Random(0)
    while not stop.is_set():
        page = await record.timed("list_audits", client.send(api.list_audits(limit=50)))
        done = [a for a in page.items if a.status == "succeeded"] if page else []
        if done:
            chosen = rng.choice(done)
            await record.timed("get_audit", client.send(api.get_audit(chosen.id)))
            await record.timed("get_report", client.send(api.get_report(chosen.id)))
            await record.timed("trend", client.send(api.trend(model_name="example")))
        await asyncio.sleep(0.5)


async def drive(
    url: str, key: str, files: dict[str, Path], args: argparse.Namespace
) -> dict[str, Any]:
    record = Recorder()
    submitted: list[uuid.UUID] = []
    counter = iter(range(1, 1 << 30))
    no_retries = RetryPolicy(attempts=1)
    async with AsyncClient(url, key, retry=no_retries, timeout=120) as client:
        started = time.monotonic()
        stop_at = started + args.duration
        # Dashboards refresh for as long as pipelines run: a pipeline polls its last audit to
        # the end, past the duration, and a short run's first reports come only then.
        pipelines_done = asyncio.Event()

        async def pipelines() -> None:
            await asyncio.gather(
                *(
                    pipeline(client, record, files, stop_at, lambda: next(counter), submitted)
                    for _ in range(args.pipelines)
                )
            )
            pipelines_done.set()

        await asyncio.gather(
            pipelines(),
            *(dashboard(client, record, pipelines_done) for _ in range(args.dashboards)),
        )
        elapsed = time.monotonic() - started
        finished = await asyncio.gather(
            *(client.wait(a, timeout=args.drain, poll_s=1.0) for a in submitted)
        )
        listed: set[uuid.UUID] = set()
        cursor = None
        while True:
            page = await client.send(api.list_audits(limit=200, cursor=cursor))
            listed |= {a.id for a in page.items}
            if (cursor := page.next_cursor) is None:
                break
    statuses: dict[str, int] = defaultdict(int)
    for audit in finished:
        statuses[audit.status] += 1
    return {
        "duration_s": round(elapsed, 1),
        "pipelines": args.pipelines,
        "dashboards": args.dashboards,
        "audits_submitted": len(submitted),
        "audits_by_status": dict(statuses),
        "audits_per_hour": round(statuses["succeeded"] / elapsed * 3600),
        "nothing_lost": listed == set(submitted) and statuses["succeeded"] == len(submitted),
        **record.summary(),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pipelines", type=int, default=8)
    parser.add_argument("--dashboards", type=int, default=8)
    parser.add_argument("--duration", type=float, default=120)
    parser.add_argument("--drain", type=float, default=600, help="most seconds to drain the queue")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="shiftaudit-load-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHIFTAUDIT_")}
    env.pop("REDIS_URL", None)
    env["SHIFTAUDIT_DATA_DIR"] = str(work / "data")
    if env.get("DATABASE_URL"):
        upgrade(env["DATABASE_URL"])  # `serve` refuses an unmigrated PostgreSQL
    key = issue_key(env, team="load", scope="write")
    cli = [sys.executable, "-m", "shiftaudit_cli"]
    model, probes = write_example(work / "example")
    files = {
        "model": model,
        "probes": Path(shutil.make_archive(str(work / "probes"), "zip", probes)),
    }
    port = int(os.environ.get("PORT", "0")) or _free_port()
    log = args.out.with_suffix(".server.log") if args.out else Path("build/load-test-server.log")
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as server_log:
        server = subprocess.Popen(
            [*cli, "serve", "--port", str(port)], env=env, stdout=server_log, stderr=server_log
        )
    url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=url) as http:
            wait_ready(http, server)
        result = asyncio.run(drive(url, key, files, args))
    finally:
        server.terminate()
        server.wait(timeout=60)
        shutil.rmtree(work, ignore_errors=True)
    result["database"] = "postgresql" if env.get("DATABASE_URL") else "sqlite"
    result["server_log"] = str(log)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


if __name__ == "__main__":
    main()
