"""TorchScript classifiers that ``load_runtime`` accepts but that misbehave once they are run.

Each takes a (B, 3, H, W) float batch and, were it to return, would give (B, 10) logits.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


class _Segfault(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # _reshape_alias makes a view without checking it against the storage: its 2nd float
        # lies 2**60 bytes past x, above any user address (4- or 5-level paging): it faults.
        far: torch.Tensor = torch.ops.aten._reshape_alias(x, [2], [1 << 58])
        return x.mean(dim=(2, 3)).repeat(1, 4)[:, :10] + far.sum()


class _Hog(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        held: list[torch.Tensor] = []
        total = x.new_zeros(())
        for i in range(4096):  # 4096 x 256 MiB = 1 TiB, each written, so every page is touched
            chunk = x.new_full([64 << 20], float(i))
            held.append(chunk)
            total = total + chunk[-1]
        return x.new_zeros([x.shape[0], 10]) + total + float(len(held))


class _Endless(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        count = x.new_zeros(())
        while bool(count >= 0):  # float32 count saturates at 2**24 and never turns negative
            count = count + 1
        return x.new_zeros([x.shape[0], 10]) + count


def _write(module: nn.Module, path: Path) -> Path:
    torch.jit.script(module).save(str(path))  # type: ignore[no-untyped-call]
    return path


def segfaulting_model(directory: Path) -> Path:
    """Reads a float 2**60 bytes past its input through an unchecked view: SIGSEGV."""
    return _write(_Segfault(), directory / "segfault.ts")


def unbounded_memory_model(directory: Path) -> Path:
    """Fills and keeps 256 MiB tensors, up to 1 TiB: exhausts memory or its rlimit."""
    return _write(_Hog(), directory / "memory_hog.ts")


def endless_model(directory: Path) -> Path:
    """Counts in a TorchScript while loop whose tensor condition never becomes false."""
    return _write(_Endless(), directory / "endless.ts")
