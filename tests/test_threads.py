"""Thread sharing: which thread counts are timed, and torch's pool around each runtime."""

from __future__ import annotations

import torch

from shiftaudit.threads import decode_workers, forward_threads, thread_options

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def test_thread_options_are_all_cores_and_half_unless_pinned():
    assert thread_options(device=CPU, pinned=None, available=8) == [8, 4]
    assert thread_options(device=CPU, pinned=None, available=2) == [2, 1]
    assert thread_options(device=CPU, pinned=None, available=1) == [1]
    assert thread_options(device=CPU, pinned=3, available=8) == [3]
    assert thread_options(device=CUDA, pinned=None, available=8) == [None]


def test_torch_keeps_one_thread_while_onnx_runtime_runs_and_gets_its_own_back():
    saved = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with forward_threads("onnxruntime-exported", 2):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        with forward_threads("torch", 1):
            assert torch.get_num_threads() == 1
        with forward_threads("torch", None):  # a GPU: left alone
            assert torch.get_num_threads() == 2
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(saved)


def test_a_cpu_audit_decodes_on_one_thread():
    assert decode_workers(CPU) == 1
    assert decode_workers(CUDA) >= 1
