"""Where the layer profile's torch work runs: on one intra-op thread per task, tasks side by side.

The profile's work between model runs is hundreds of medium-sized, independent operations per
shift: for every layer a real FFT of its shifted output and a few norms, and for every input
of a local run an inverse FFT. torch's intra-op pool splits each of them over every core, and
for tensors of this size the split costs more than it brings, the more so on a shared
machine: on this project's 2-core machines, under load, an irfft2 of a 4 x 96 x 112 x 57
spectrum took 23 ms on one intra-op thread and 58 ms on two, a norm of it 0.7 ms against
16 ms, a roll 3.6 ms against 41 ms. So on a CPU device the profile runs torch on one
intra-op thread, and the independent tasks of one step (one per layer, or per input) run on
as many Python threads as torch had intra-op threads before (torch releases the GIL inside
its operators, so they compute on the cores at once). On a GPU the tasks run in order on the
calling thread: the device already runs each one in parallel.

Every task is a pure function of its arguments; results come back in the order of the
inputs, so the numbers do not depend on how the tasks were scheduled.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from typing import TypeVar

import torch

In = TypeVar("In")
Out = TypeVar("Out")


class Tasks:
    """Runs independent tasks, on a pool of threads (each at one intra-op thread) or inline.

    `run_threads`: the intra-op threads of the profile's own ONNX Runtime sessions (None: the
    model's setting). On a CPU one: every model run of the profile overlaps the comparisons
    of the previous one, and a second thread would contend with them for the same cores."""

    def __init__(self, pool: ThreadPoolExecutor | None, *, run_threads: int | None = None) -> None:
        self._pool = pool
        self.run_threads = run_threads

    def map(self, fn: Callable[[In], Out], items: Iterable[In]) -> list[Out]:
        """[fn(item) for item in items], in that order, the calls side by side on the pool.

        Each call runs in inference mode, as the profile's caller does (the mode is a
        thread's own, and the workers are threads of their own)."""

        def call(item: In) -> Out:
            with torch.inference_mode():
                return fn(item)

        listed = list(items)
        if self._pool is None or len(listed) < 2:
            return [fn(item) for item in listed]
        return list(self._pool.map(call, listed))


def in_callers_modes(fn: Callable[[In], Out]) -> Callable[[In], Out]:
    """`fn`, to be called on another thread in the modes of the thread that wraps it.

    Inference and grad mode and autocast are a thread's own: a model run moved to a worker
    thread would otherwise run in full precision and record autograd graphs."""
    inference, grad = torch.is_inference_mode_enabled(), torch.is_grad_enabled()
    autocast = [
        (kind, torch.get_autocast_dtype(kind))
        for kind in ("cpu", "cuda")
        if torch.is_autocast_enabled(kind)
    ]

    def call(item: In) -> Out:
        with ExitStack() as modes:
            modes.enter_context(torch.inference_mode(inference))
            modes.enter_context(torch.set_grad_enabled(grad))
            for kind, dtype in autocast:
                modes.enter_context(torch.autocast(kind, dtype=dtype))
            return fn(item)

    return call


@contextmanager
def profile_tasks(device: torch.device) -> Iterator[Tasks]:
    """Tasks for the profile on `device`; on a CPU, torch at one intra-op thread meanwhile
    (restored afterwards) and as many workers as it had intra-op threads."""
    if device.type != "cpu":
        yield Tasks(None)
        return
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        if saved < 2:
            yield Tasks(None, run_threads=1)
            return
        with ThreadPoolExecutor(max_workers=saved, thread_name_prefix="shiftaudit-profile") as pool:
            yield Tasks(pool, run_threads=1)
    finally:
        torch.set_num_threads(saved)
