"""PeakMemory: what `vlbench bench` and every run record as peak training memory."""

import torch

from vlbench.memory import PeakMemory


def test_cpu_peak_is_the_growth_inside_the_block():
    with PeakMemory(torch.device("cpu")) as memory:
        block = torch.ones(64, 2**20)  # 256 MB, touched
        del block  # freed before the block ends: the peak still counts it
    assert 240 < memory.mb < 400
    assert memory.reserved_mb is None  # CUDA's reserved pool has no CPU counterpart
    with PeakMemory(torch.device("cpu")) as idle:
        sum(range(1000))
    assert idle.mb < 50  # the RSS already resident at entry is not counted
