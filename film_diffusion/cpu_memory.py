"""Keep freed memory in the process when training on the CPU, as CUDA's caching allocator does on a GPU.

Why: PyTorch takes CPU tensors from glibc's ``malloc``. glibc hands the top of its heap back to the kernel
whenever more than its trim threshold of it is free, and a training step frees most of what it allocated
(activations, gradients) by its end, so every step asks the kernel for the same memory again and pays a
page fault and a zeroed page per 4 KiB: on our 2-core CI machine 180 MB and 14% of the time of a DiT-S/2
bf16 step. With trimming off and the mmap threshold fixed at its largest, steady-state steps fault no
pages in. The cost is the one a GPU process pays too: the process keeps its peak heap.

The same from the shell, for any program: ``MALLOC_TRIM_THRESHOLD_=2147483647 MALLOC_MMAP_THRESHOLD_=33554432``.
"""

from __future__ import annotations

import ctypes
import sys

_M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20
"""Blocks below this come from the heap, where they are reused; glibc accepts at most 32 MiB."""
TRIM_THRESHOLD = 2**31 - 1
"""Free heap kept before any is handed back (the largest value ``mallopt`` takes, 2 GiB)."""


def keep_freed_memory() -> bool:
    """Configure glibc's allocator for this process as described above; False where there is no glibc."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # another C library (musl), or none by that name
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
