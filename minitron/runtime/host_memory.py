"""Keep freed host memory in the process on CPU runs, so each training step reuses the last one's.

glibc serves every allocation above its mmap threshold (at most 32 MB) with a fresh ``mmap`` and
returns it with ``munmap`` when freed. A KD step allocates dozens of such tensors (logits and their
gradients are [tokens x vocab]), so each step faulted in, and the kernel zeroed, gigabytes of new
pages: on the 2-core CPU machines a third of the step's time was system time. Serving every
allocation from the heap and never trimming it makes the next step's same-size tensors land on pages
that are already mapped. The process keeps its peak footprint, which a training run reaches anyway.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import platform

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc's mallopt parameters (malloc.h)


@functools.lru_cache(maxsize=None)
def keep_freed_memory() -> bool:
    """Switch glibc's allocator to heap-only, no trimming; False where there is no glibc (then nothing changes)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    # mallopt returns 1 on success; the trim threshold is an int, so "never" is INT_MAX.
    return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1))
