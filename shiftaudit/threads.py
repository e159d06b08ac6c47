"""CPU threads: torch's intra-op pool, ONNX Runtime's pool and the decode threads share the cores.

Each pool sizes itself to every core, and each spins for a while after its work before it
sleeps, so two of them busy at once on a CPU fight: a 2-core machine ran ONNX Runtime at half
its own speed inside the sweep. So only one pool computes at a time: while ONNX Runtime runs
the model its session has the forward pass's threads and torch (shift copies, statistics)
runs on the calling thread alone, and decoding, which runs ahead of the model anyway, gets one
thread on a CPU-device audit.
"""

from __future__ import annotations

import functools
import os
import threading
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


# ATen hands these ops on float32 and float64 tensors to MKL's vector math (VML) where torch
# is built with MKL (aten/src/ATen/cpu/vml.h).
_VML_OPS = [
    "acos",
    "asin",
    "atan",
    "cos",
    "erf",
    "erfc",
    "exp",
    "expm1",
    "log",
    "log10",
    "log1p",
    "log2",
    "sin",
    "sqrt",
    "tan",
    "tanh",
    "trunc",
]


_VML_LOCK = threading.Lock()


@functools.cache
def resolve_vml_kernels() -> None:
    """Call each of MKL's vector-math functions once, on this thread, before any parallel op.

    oneMKL 2024.2 (torch 2.13's) picks a function's kernel on its first call, and ATen makes
    that call from every intra-op thread at once: one thread can then run the low-accuracy
    kernel on its part of that one call (pytorch/pytorch#188792). Here the first float64 exp
    of a sweep in a fresh sandbox did, in about one audit in three on a loaded 2-core machine:
    40 probabilities 1.8e-9 off, so a rerun's report differed. After this call every kernel
    is chosen, and a forked child inherits the choice. The lock: two threads making these
    first calls at once would race in the same way.
    """
    with _VML_LOCK, torch.inference_mode():
        for dtype in (torch.float32, torch.float64):
            one = torch.full((1,), 0.5, dtype=dtype)
            for op in _VML_OPS:
                getattr(torch, op)(one)
