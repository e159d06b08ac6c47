"""glibc's allocator in a process that sweeps: freed buffers stay for the next batch.

A sweep allocates and frees buffers of the same sizes batch after batch (shifted images,
spectra, layer outputs). By default glibc serves a block over its mmap threshold (128 KB,
raised to the size of the largest mapping freed so far) from a fresh mapping, and hands the
top of the heap back to the kernel once more than its trim threshold (twice that) is free:
the next batch then faults every page in again, and the kernel zeroes each one. With the
mmap threshold at 32 MB (glibc's own ceiling for the dynamic one) and the trim threshold at
256 MB, such buffers are reused from the heap. A sweep's process lives for one audit, so
the memory it keeps is given back when it exits. Measured in docs/benchmarks.md ("Memory
allocator").
"""

from __future__ import annotations

import ctypes
import platform

MMAP_THRESHOLD_BYTES = 32 * 2**20
TRIM_THRESHOLD_BYTES = 256 * 2**20
# mallopt's parameter numbers, from glibc's malloc.h.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def keep_freed_memory() -> bool:
    """Set glibc's mmap and trim thresholds for this process; False where libc is not glibc
    (the allocator is then left as it is)."""
    if platform.libc_ver()[0] != "glibc":
        return False
    mallopt = ctypes.CDLL(None).mallopt
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return bool(
        mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
        and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
    )
