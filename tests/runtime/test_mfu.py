"""The CPU peak behind MFU: one thread's matrix-multiply rate times the threads, whatever the machine's load."""

from __future__ import annotations

import torch

from tabula.runtime import mfu


def test_cpu_peak_is_one_threads_rate_times_the_threads(monkeypatch):
    seen = []

    def rate(seconds, size):
        seen.append(torch.get_num_threads())
        return 1e9

    monkeypatch.setattr(mfu, "_matmul_rate", rate)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert mfu.measure_cpu_peak() == 2e9
        assert seen == [1] and torch.get_num_threads() == 2  # measured on one thread, the count restored
    finally:
        torch.set_num_threads(before)


def test_cpu_peak_is_a_real_measurement():
    peak, source = mfu.peak_flops(torch.device("cpu"), "fp32")
    assert 1e8 < peak < 1e14 and "measured" in source
