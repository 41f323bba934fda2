"""keep_freed_memory: after it, memory a step frees is reused by the next step without page faults."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PROBE = """
import resource, sys, torch
from film_diffusion.cpu_memory import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
def step():  # a training step's pattern: many blocks allocated and written, then all freed
    blocks = [torch.ones(1 << 20) for _ in range(64)]  # 64 x 4 MiB
    del blocks
for _ in range(2):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def page_faults(mode: str) -> int:
    # glibc's defaults adapt to what the process did before, so the probe starts from small fixed
    # thresholds (which keep_freed_memory must override): every step then faults its memory in again.
    env = {**os.environ, "MALLOC_TRIM_THRESHOLD_": "131072", "MALLOC_MMAP_THRESHOLD_": "131072"}
    result = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True, env=env)
    return int(result.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_steps_after_keep_freed_memory_take_almost_no_page_faults():
    default, kept = page_faults("default"), page_faults("keep")
    one_step_of_pages = 64 * (4 << 20) // 4096
    # freed memory went back to the kernel and faulted in again: at least once per block and step, and once
    # per 4 KiB page unless the kernel backs the blocks with transparent huge pages (one fault per 2 MiB)
    assert default >= 5 * 64, default
    assert kept < min(one_step_of_pages, default) // 10, (kept, default)
