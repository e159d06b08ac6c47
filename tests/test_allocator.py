"""The sweep process's allocator setting, measured by the page faults of a real sweep's shifts.

Each measurement runs in its own interpreter: mallopt changes the whole process.
"""

import platform
import subprocess
import sys

import pytest

# Fourier shifts of 224 px probes, two pairs a batch: each batch allocates and frees float64
# spectra and results of about 1.2 MB, as a sweep does.
_SWEEP = """
import resource, sys, torch
from shiftaudit.allocator import keep_freed_memory
from shiftaudit.config import SweepConfig
from shiftaudit.shifts import ShiftGenerator, plan_shifts

if sys.argv[1] == "keep":
    assert keep_freed_memory()
torch.set_num_threads(1)
half = [(y / 2, x / 2) for y in range(-2, 3) for x in range(-2, 3)]
plan = plan_shifts(SweepConfig(mode="circular", shifts=half, subpixel="fourier"), (224, 224))
source = torch.rand(4, 224, 224, 3)
probe = torch.arange(4).repeat_interleave(plan.count)
shift = torch.arange(plan.count).repeat(4)
shifter = ShiftGenerator(
    plan, fill=torch.zeros(3), channels_first=True, device=torch.device("cpu")
)


def sweep():
    for start in range(0, len(probe), 2):
        shifter(source, probe[start : start + 2], shift[start : start + 2])


sweep()  # the first pass maps what the process will keep
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    sweep()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _page_faults(setting: str) -> int:
    done = subprocess.run(
        [sys.executable, "-c", _SWEEP, setting], capture_output=True, text=True, check=True
    )
    return int(done.stdout.strip())


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_a_sweep_reuses_its_freed_buffers_instead_of_faulting_them_in_again():
    default, kept = _page_faults("default"), _page_faults("keep")
    # Three passes after the first, idle machine: 37,617-43,501 faults by default, 1,772-2,962
    # with the setting; under CI's load the default faulted less (one pass: 6,472 and 1,478).
    assert default > 5_000
    assert kept < default / 2
