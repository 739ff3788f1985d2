"""PeakMemory: what `vlbench bench` and every run record as peak training memory; and the heap
setting the engine trains with on CPU."""

import ctypes
import subprocess
import sys

import pytest
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


REUSE_CHECK = """
import resource, torch
from vlbench.memory import keep_freed_memory, trim_heap
faults = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt
keep_freed_memory()
def step():  # a training step's large tensors (3 x 128 MB, 98,304 pages): made, combined, freed
    a, b = torch.ones(32, 2**20), torch.ones(32, 2**20)
    (a + b).sum()
for _ in range(8):  # the heap settles into free chunks that fit the step
    step()
before = faults()
step()  # glibc's default would mmap each tensor afresh and fault every page in again
steady = faults() - before
trim_heap()  # the free pages go back: the next step faults them in
before = faults()
step()
print(steady, faults() - before)
"""


def test_a_step_s_large_tensors_reuse_freed_pages_until_the_heap_is_trimmed():
    try:
        ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        pytest.skip("no glibc here: keep_freed_memory is a no-op")
    # a fresh interpreter, so the heap's layout is not what earlier tests left
    out = subprocess.run([sys.executable, "-c", REUSE_CHECK], capture_output=True, text=True, check=True).stdout
    steady, after_trim = map(int, out.split())
    assert steady < 2000
    assert after_trim > 60000
