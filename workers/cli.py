"""`shiftaudit worker` and `shiftaudit reconciler`."""

from __future__ import annotations

import argparse
import os
import re
import socket

from service.audits.runner import gpu_present
from service.routing import ANY_QUEUE, CPU_QUEUE, GPU_QUEUE, gpu_type_queue
from service.settings import get_settings
from shiftaudit.errors import ConfigError
from shiftaudit_api.audits import GPU_TYPE_NAME


def configure_worker(worker: argparse.ArgumentParser) -> None:
    """`worker`: take shards from Redis and sweep them, sandboxed."""
    worker.add_argument(
        "--device",
        choices=("auto", "cpu", "gpu"),
        default="auto",
        help="which audits to take: gpu takes GPU and device-auto audits, cpu takes CPU and "
        "device-auto audits; auto: gpu when this machine has a visible NVIDIA GPU",
    )
    worker.add_argument(
        "--gpu", help="the GPU index this worker owns (sets CUDA_VISIBLE_DEVICES for it)"
    )
    worker.add_argument(
        "--gpu-type",
        default=os.environ.get("SHIFTAUDIT_WORKER_GPU_TYPE") or None,
        help="also take the audits that ask for this GPU type (gpu_type; one of the API's "
        "SHIFTAUDIT_GPU_TYPES), which no other worker takes (default: "
        "$SHIFTAUDIT_WORKER_GPU_TYPE)",
    )
    worker.add_argument("--queues", help="comma-separated queues instead of the device's")
    worker.add_argument("--name", help="worker name (default: device@host)")
    worker.add_argument(
        "--threads",
        type=int,
        help="CPU threads per sweep when the audit sets none (default: all cores); give "
        "each of W workers on one machine cores/W",
    )
    worker.add_argument("--loglevel", default="INFO")
    worker.set_defaults(handler=_worker)


def configure_reconciler(reconciler: argparse.ArgumentParser) -> None:
    """`reconciler`: make the broker agree with the database, every interval."""
    reconciler.add_argument("--once", action="store_true", help="one pass, then exit")
    reconciler.set_defaults(handler=_reconciler)


def worker_queues(device: str, gpu_type: str | None = None) -> list[str]:
    """The queues a worker on `device` consumes: its GPU type's first, then its device's
    and the device-agnostic one."""
    typed = [gpu_type_queue(gpu_type)] if gpu_type else []
    return [*typed, GPU_QUEUE if device == "gpu" else CPU_QUEUE, ANY_QUEUE]


def _worker(args: argparse.Namespace) -> int:
    if args.gpu is not None:
        # Set before anything could initialise CUDA; the sandboxed sweeps inherit it.
        os.environ["CUDA_VISIBLE_DEVICES"] = args.gpu
    device = args.device if args.device != "auto" else ("gpu" if gpu_present() else "cpu")
    if args.gpu_type is not None and not re.match(GPU_TYPE_NAME, args.gpu_type):
        raise ConfigError(f"--gpu-type {args.gpu_type!r}: lower-case letters and digits, e.g. a100")
    if args.gpu_type is not None and device != "gpu":
        raise ConfigError("--gpu-type is for GPU workers (--device gpu)")
    queues = args.queues.split(",") if args.queues else worker_queues(device, args.gpu_type)
    from service.audits.runner import job_scratch
    from service.scratch import remove_stale
    from workers.app import create_celery

    settings = get_settings()
    # A worker killed mid-audit leaves its job's scratch (the sweep's work directory).
    removed = remove_stale(job_scratch(settings.resolved_worker_cache_dir))
    if removed:
        print(f"removed what stopped processes left: {len(removed)} job directories")

    name = args.name or f"{device}{'' if args.gpu is None else args.gpu}@{socket.gethostname()}"
    app = create_celery(settings, worker_name=name, threads=args.threads)
    # Solo pool: one shard at a time, run from the worker's main process, which never
    # touches CUDA itself (the sandboxed sweep does) and so has nothing to fork.
    app.worker_main(
        [
            "worker",
            "--pool=solo",
            f"--queues={','.join(queues)}",
            f"--hostname={name}",
            f"--loglevel={args.loglevel}",
            "--without-gossip",
            "--without-mingle",
        ]
    )
    return 0


def _reconciler(args: argparse.Namespace) -> int:
    from service.audits.reconciler import run_reconciler

    run_reconciler(get_settings(), once=args.once)
    return 0
