"""CPU threads: torch's intra-op pool, ONNX Runtime's pool and the decode threads share the cores.

Each pool sizes itself to every core, and each spins for a while after its work before it
sleeps, so two of them busy at once on a CPU fight: a 2-core machine ran ONNX Runtime at half
its own speed inside the sweep. So only one pool computes at a time: while ONNX Runtime runs
the model its session has the forward pass's threads and torch (shift copies, statistics)
runs on the calling thread alone, and decoding, which runs ahead of the model anyway, gets one
thread on a CPU-device audit.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch


def thread_options(*, device: torch.device, pinned: int | None, available: int) -> list[int | None]:
    """Intra-op thread counts worth timing, most first; [None] on a GPU (threads do not apply).

    All cores, and half of them: a small model or a busy machine can run faster on fewer
    threads, and more options would multiply the tuning time.
    """
    if device.type == "cuda":
        return [None]
    if pinned is not None:
        return [pinned]
    counts: list[int | None] = [available]
    if available > 1:
        counts.append(available // 2)
    return counts


@contextmanager
def forward_threads(backend: str, threads: int | None) -> Iterator[None]:
    """torch's intra-op threads while `backend` runs the model, restored afterwards.

    torch: `threads`. ONNX Runtime (whose session holds `threads` of its own): one, so that
    torch's work between forward passes never wakes a second pool on the same cores.
    """
    saved = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads if backend == "torch" else 1)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def decode_workers(device: torch.device) -> int:
    """Threads decoding probes one chunk ahead of the model.

    On a CPU device one: a chunk's decoding is a small fraction of its forward passes, and
    every further thread takes a core from them. A GPU's host has the cores to spare, and a
    fast device needs the probes quickly.
    """
    if device.type != "cuda":
        return 1
    return min(8, os.cpu_count() or 2)
