"""Where shards go: the task and queue names that the API, the reconciler and the workers
share (no imports of the service, so that the worker CLI can use it)."""

from __future__ import annotations

import uuid

# The contract with the workers: this task name, two arguments (audit id as a string, shard
# number), one queue per kind of device an audit may run on, and one per GPU type.
RUN_SHARD_TASK = "shiftaudit.run_shard"
GPU_QUEUE, CPU_QUEUE, ANY_QUEUE = "audits.gpu", "audits.cpu", "audits.any"


def gpu_type_queue(gpu_type: str) -> str:
    """The queue that only workers started with `--gpu-type` take from."""
    return f"{GPU_QUEUE}.{gpu_type}"


def route_for(device: str, gpu_type: str | None = None) -> str:
    """The queue for an audit: its GPU type's when it asked for one; else by
    `runtime.device`, where `auto` may run on any worker and the others only where that
    device is."""
    if gpu_type is not None:
        return gpu_type_queue(gpu_type)
    if device == "auto":
        return ANY_QUEUE
    return CPU_QUEUE if device == "cpu" else GPU_QUEUE


def job_id(audit_id: uuid.UUID | str, shard: int) -> str:
    """The message id of a shard's job: the reconciler looks for it in the broker."""
    return f"{audit_id}/{shard}"
