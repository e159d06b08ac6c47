"""Celery workers on this machine: latency, throughput with 1 vs 2 workers, sharding.

Real parts, as in tests/workers: a private redis-server, a fresh PostgreSQL database, the API
in-process and `shiftaudit worker` processes. Figures go to docs/workers.md.

    python benchmarks/workers.py [--audits 12] [--rounds 2] [--cold] [--out workers.json]

(a) latency of an idle system, over sequential small audits: POST /v1/audits returned -> the
    audit's `started_at` (the worker claimed it), -> the sweep's first forward (the claim
    plus what the worker logs: from the job reaching the sandbox to its first progress
    line, which the engine writes after its first batch), and -> `finished_at`.
(b) audits/hour with 1 and 2 CPU workers, one thread each (as on separate machines): the
    same batch of small audits submitted at once, until the last one finishes.
(c) one large audit (96 probes of a wide net, 289 shifts) unsharded on 1 worker, and in 2
    shards on 1 and on 2 workers.
Rounds alternate the settings and report medians; every audit must succeed. `--cold` runs
the workers without the sandbox's fork server (SHIFTAUDIT_WARM_SANDBOX=false): a fresh
interpreter per job, as before it existed; the same machine's before-and-after.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from service.migrate import upgrade
from tests.nets import AliasingNet, GlobalPoolNet, export_program, noise_probes
from tests.postgres import fresh_database
from tests.workers.conftest import CONFIG, Deployment, RedisServer, zip_probes

LARGE_CONFIG = {**CONFIG, "sweep": {"mode": "circular", "max_shift": 8}}


def _started_after_submit(deployment: Deployment, audit_id: str, submitted: datetime) -> float:
    started = datetime.fromisoformat(deployment.audit(audit_id)["started_at"])
    return (started - submitted).total_seconds()


def _succeeded(deployment: Deployment, audit_id: str) -> None:
    audit = deployment.wait(audit_id, timeout=1800)
    if audit["status"] != "succeeded":
        logs = {name: deployment.log(name)[-3000:] for name in deployment.processes}
        raise SystemExit(f"audit {audit_id} {audit['status']}: {audit['error']}\n{logs}")


FIRST_FORWARD = re.compile(r"first forward ([0-9.]+) s after the job reached the sandbox")


def latency(
    deployment: Deployment, inputs: tuple[str, str], count: int, worker: str = "w1"
) -> dict[str, list[float]]:
    seconds: dict[str, list[float]] = {"running": [], "first_forward": [], "finished": []}
    for _ in range(count):
        logged = len(FIRST_FORWARD.findall(deployment.log(worker)))
        submitted = datetime.now().astimezone()
        audit_id = deployment.submit(*inputs)
        _succeeded(deployment, audit_id)
        audit = deployment.audit(audit_id)
        claimed = _started_after_submit(deployment, audit_id, submitted)
        seconds["running"].append(claimed)
        finished = datetime.fromisoformat(audit["finished_at"]) - submitted
        seconds["finished"].append(finished.total_seconds())
        found = FIRST_FORWARD.findall(deployment.log(worker))[logged:]
        if found:
            seconds["first_forward"].append(claimed + float(found[0]))
    return seconds


def _summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "max": max(values)} if values else {}


def batch_seconds(deployment: Deployment, inputs: tuple[str, str], count: int) -> float:
    started = time.perf_counter()
    ids = [deployment.submit(*inputs) for _ in range(count)]
    for audit_id in ids:
        _succeeded(deployment, audit_id)
    return time.perf_counter() - started


def large_seconds(
    deployment: Deployment, inputs: tuple[str, str], shard_probes: int, shards: list[Any]
) -> float:
    """Submit to succeeded of the large audit; each shard's own seconds go into `shards`."""
    deployment.settings.shard_probes = shard_probes
    started = time.perf_counter()
    audit_id = deployment.submit(*inputs, LARGE_CONFIG)
    _succeeded(deployment, audit_id)
    elapsed = time.perf_counter() - started
    shards.append([_shard_seconds(shard) for shard in deployment.shards(audit_id)])
    return elapsed


def _shard_seconds(shard: Any) -> dict[str, Any]:
    """Where one shard's time went: claimed to finished, and the engine's stages inside."""
    result = shard.result or {}
    stages = result.get("stage_seconds", {})
    return {
        "probes": shard.probe_stop - shard.probe_start,
        "claimed_to_finished_s": (shard.finished_at - shard.started_at).total_seconds(),
        "engine_s": result.get("wall_time_s"),
        "sweep_s": stages.get("sweep"),
        "layers_s": stages.get("layers"),
        "load_s": stages.get("load"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--audits", type=int, default=12, help="audits per throughput batch")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path)
    parser.add_argument(
        "--cold", action="store_true", help="no fork server: a fresh interpreter per job"
    )
    args = parser.parse_args()
    warm = {"SHIFTAUDIT_WARM_SANDBOX": "false" if args.cold else "true"}
    with tempfile.TemporaryDirectory() as tmp, fresh_database("shiftaudit_bench") as url:
        root = Path(tmp)
        upgrade(url)
        broker = RedisServer(root)
        broker.start()
        deployment = Deployment(root / "deployment", url, broker)
        try:
            small = deployment.upload(
                export_program(AliasingNet(seed=4), root / "small.pt2"),
                zip_probes(noise_probes(root / "probes24", 24, labels=6)),
            )
            large = deployment.upload(
                export_program(GlobalPoolNet(width=128), root / "large.pt2"),
                zip_probes(noise_probes(root / "probes96", 96, labels=5)),
            )
            results: dict[str, Any] = {"audits_per_batch": args.audits, "cold": args.cold}
            deployment.start_worker("w1", "cpu", "--threads=1", **warm)
            latency(deployment, small, 2)  # warm: the worker caches the artifacts
            lat = latency(deployment, small, 10)
            results["submit_to_running_s"] = _summary(lat["running"])
            results["submit_to_first_forward_s"] = _summary(lat["first_forward"])
            results["submit_to_finished_s"] = _summary(lat["finished"])
            one, two = [], []
            sharded_one, sharded_two, unsharded = [], [], []
            shards: dict[str, list[Any]] = {"unsharded": [], "2_shards_1": [], "2_shards_2": []}
            for _ in range(args.rounds):
                if "w2" in deployment.processes:
                    deployment.kill("w2", signal.SIGTERM)
                one.append(batch_seconds(deployment, small, args.audits))
                unsharded.append(large_seconds(deployment, large, 10_000, shards["unsharded"]))
                sharded_one.append(large_seconds(deployment, large, 48, shards["2_shards_1"]))
                deployment.start_worker("w2", "cpu", "--threads=1", **warm)
                latency(deployment, small, 1)
                two.append(batch_seconds(deployment, small, args.audits))
                sharded_two.append(large_seconds(deployment, large, 48, shards["2_shards_2"]))
            per_hour = {
                "1_worker": 3600 * args.audits / statistics.median(one),
                "2_workers": 3600 * args.audits / statistics.median(two),
            }
            results["audits_per_hour"] = per_hour
            results["scale_out_2_vs_1"] = per_hour["2_workers"] / per_hour["1_worker"]
            results["large_audit_s"] = {
                "unsharded_1_worker": statistics.median(unsharded),
                "2_shards_1_worker": statistics.median(sharded_one),
                "2_shards_2_workers": statistics.median(sharded_two),
            }
            results["large_audit_shards"] = shards
            results["sharding_speedup_2_workers"] = statistics.median(
                unsharded
            ) / statistics.median(sharded_two)
        finally:
            deployment.close()
            broker.stop()
    print(json.dumps(results, indent=2))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
