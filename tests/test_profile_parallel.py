"""The layer profile's parallel path (shiftaudit.profile.parallel) computes what the plain one does.

On a CPU the profile runs torch at one intra-op thread, compares the layers of a shift side by
side on worker threads and runs the next shift's model pass on another thread meanwhile. The
straightforward computation, each comparison in turn on the caller's thread at the caller's
thread count, must give the same profile: the same entries, reasons and findings, and every
number within 1e-6 + 1e-5 |value| (float32 FFTs and convolutions on one thread add up in a
different order than on two, about 1e-7 relative; nothing else differs).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from shiftaudit.profile import layer_profile as profile_module
from shiftaudit.profile.layer_profile import layer_profile
from shiftaudit.profile.parallel import Tasks, in_callers_modes, profile_tasks
from shiftaudit.runtimes import load_runtime

from .nets import AliasingNet, TinyViT, export_onnx, export_program

ABSOLUTE, RELATIVE = 1e-6, 1e-5


class _ZeroPaddedStrided(nn.Module):
    """Zero padding, a stride-2 conv and an explicit pad: the deployed, torus and local runs
    all differ, and the local runs read padded maps through their cones."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.first = nn.Conv2d(3, 8, 3, padding=1)
        self.strided = nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.valid = nn.Conv2d(8, 8, 3)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.strided(torch.relu(self.first(x))))
        x = torch.relu(self.valid(F.pad(x, (1, 1, 1, 1))))
        return self.head(x.mean((2, 3)))


@pytest.fixture(autouse=True)
def _two_threads() -> Iterator[None]:
    """torch at two intra-op threads (so that the parallel path has workers), restored."""
    saved = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(saved)


@contextlib.contextmanager
def _plain(device: torch.device) -> Iterator[Tasks]:
    """The straightforward computation: every task in turn, torch's threads untouched."""
    yield Tasks(None)


def _numbers(entry: Any) -> dict[str, float | None]:
    fields = ("on_grid_error", "off_grid_error", "aliasing_error", "local_aliasing", "cosine")
    return {name: getattr(entry, name) for name in (*fields, "relative_error_max")}


def _findings(profile: Any) -> tuple[dict[str, Any], float | None]:
    """The findings without the one number they carry (the birth node's local aliasing),
    and that number: nodes, roles and texts must be equal, the number within tolerance."""
    found = profile.findings.model_dump()
    born = found["aliasing_born_at"]
    return found, born.pop("local_aliasing") if born else None


@pytest.mark.parametrize(
    "module", [AliasingNet(), _ZeroPaddedStrided(), TinyViT()], ids=["circular", "zero", "vit"]
)
@pytest.mark.parametrize("fmt", ["onnx", "torch_export"])
def test_the_parallel_profile_equals_the_plain_computation(tmp_path, monkeypatch, module, fmt):
    size = 16
    export = export_onnx if fmt == "onnx" else export_program
    path = export(module, tmp_path / f"m.{fmt}", size)
    inputs = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(1))
    fast = layer_profile(load_runtime(path), inputs, layout="NCHW", size=(size, size))
    monkeypatch.setattr(profile_module, "profile_tasks", _plain)
    plain = layer_profile(load_runtime(path), inputs, layout="NCHW", size=(size, size))

    assert [e.name for e in fast.entries] == [e.name for e in plain.entries]
    (found, born), (expected, expected_born) = _findings(fast), _findings(plain)
    assert found == expected
    assert (born is None) == (expected_born is None)
    if born is not None:
        assert born == pytest.approx(expected_born, rel=RELATIVE, abs=ABSOLUTE)
    assert fast.forward_passes == plain.forward_passes
    measured = 0
    for a, b in zip(fast.entries, plain.entries, strict=True):
        assert a.reasons == b.reasons, a.name
        assert a.receptive_field == b.receptive_field, a.name
        for name, value in _numbers(a).items():
            expected = _numbers(b)[name]
            if expected is None:
                assert value is None, (a.name, name)
                continue
            measured += 1
            assert value == pytest.approx(expected, rel=RELATIVE, abs=ABSOLUTE), (a.name, name)
    assert measured > 0


def test_the_profile_gives_torch_its_threads_back(tmp_path):
    path = export_onnx(AliasingNet(), tmp_path / "m.onnx", 16)
    layer_profile(load_runtime(path), torch.randn(2, 3, 16, 16), layout="NCHW", size=(16, 16))
    assert torch.get_num_threads() == 2


def test_tasks_run_on_one_intra_op_thread_and_keep_their_order():
    with profile_tasks(torch.device("cpu")) as tasks:
        seen = tasks.map(lambda i: (i, torch.get_num_threads()), range(8))
    assert seen == [(i, 1) for i in range(8)]
    assert torch.get_num_threads() == 2


def test_a_run_moved_to_another_thread_keeps_the_callers_modes():
    found: dict[str, Any] = {}

    def probe(_: None) -> None:
        found["inference"] = torch.is_inference_mode_enabled()
        found["autocast"] = torch.is_autocast_enabled("cpu")
        found["dtype"] = torch.get_autocast_dtype("cpu")

    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        moved = in_callers_modes(probe)
    worker = threading.Thread(target=moved, args=(None,))
    worker.start()
    worker.join()
    assert found == {"inference": True, "autocast": True, "dtype": torch.bfloat16}
