"""glibc malloc settings for CPU inference: keep freed memory mapped for the next step instead of faulting it
in again.

A CPU engine step allocates and frees multi-MB tensors by the hundred (activations of a 4,096-token prefill
chunk, gathered KV pages of a decode). glibc serves allocations above its mmap threshold with fresh pages and
hands memory freed at the top of its heap back to the OS, so each step faults the same pages in again. Measured
on the 2-core CI machine, the embedded model's batch-32 bench case (32 requests, 8,993 prompt and 2,501 output
tokens): 1.5-1.8 million minor page faults and 7.3-7.5 s of system time in a ~32 s run with glibc's defaults;
0.64 million and 3.1 s with the settings below (set through the MALLOC_*_ environment variables for that
measurement). jemalloc or tcmalloc loaded with LD_PRELOAD do the same job; this needs no extra package.
The settings are process-wide: in `flagstack bench engine --device cpu` the HF anchors, which run in the same
process after the engine is made, get them too. FLAGSTACK_CPU_MALLOC=0 leaves glibc's defaults.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3  # mallopt parameters (malloc.h)
SETTINGS = {
    M_MMAP_THRESHOLD: 32 << 20,  # glibc's largest: tensors up to 32 MB come from the heap
    M_TRIM_THRESHOLD: 1 << 30,  # return freed heap memory to the OS only past 1 GB
    M_TOP_PAD: 256 << 20,  # grow the heap in 256 MB steps, not one fault-in per tensor
}
_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Apply SETTINGS once per process where the C library is glibc; whether they are in effect."""
    global _applied
    if _applied is None:
        _applied = False
        if sys.platform.startswith("linux") and os.environ.get("FLAGSTACK_CPU_MALLOC", "1") != "0":
            try:
                libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                mallopt = libc.mallopt
            except (OSError, AttributeError):  # not glibc (e.g. musl has no mallopt)
                return False
            mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
            _applied = all(mallopt(param, value) == 1 for param, value in SETTINGS.items())
    return _applied
