"""Relaunch a compiled Triton kernel without Triton's per-call argument inspection.

`kernel[grid](*args)` looks its binary up on every call: it binds the arguments, specializes each one
(a tensor's dtype and 16-byte alignment, an integer's width, whether it is 1, whether 16 divides it)
and hashes the result. For conv_transpose2d's ~40 arguments that cost more Python time on an H100
host than its whole kernel runs on the GPU (scripts/host_overhead.py: 108 us of host time per call
against 9.4 us of GPU time on the small core shape; torch's conv takes 18 us of host time). A wrapper
that already knows everything the specialization depends on (shapes, strides, dtypes, which pointers
are aligned) can key the compiled kernel by that and launch it directly the next time. FlagGems'
LibEntry and vLLM's jit cache cut the same cost by inspecting the arguments themselves; here the caller
builds the key, which keeps this file small and the key explicit where the arguments are made.

The caller's key must fix every value Triton specializes on: each run-time integer (or a function
of the key, such as a stride of a tensor the wrapper allocates), each pointer's dtype and alignment,
the constexprs and launch options. Under TRITON_INTERPRET=1 nothing is cached: the interpreter runs
every launch. Nor before Triton 3.3, whose compiled kernels took only the run-time arguments (from 3.3 on
they take every parameter, constexprs included, which is what the direct launch passes).
"""
from __future__ import annotations

import functools

import torch
import triton

MAX_ENTRIES = 512  # compiled kernels kept per launcher; a caller seeing more distinct keys starts over


def remember(cache: dict, key, value) -> None:
    """cache[key] = value, the cache emptied first when it holds MAX_ENTRIES (one caller seeing many shapes)."""
    if len(cache) >= MAX_ENTRIES:
        cache.clear()
    cache[key] = value


def aligned(t: torch.Tensor) -> bool:
    """Whether t's data pointer is 16-byte aligned: Triton compiles aligned and unaligned pointers apart."""
    return t.data_ptr() % 16 == 0


# Triton versions whose compiled kernels take every parameter in order (see the module docstring)
DIRECT_LAUNCH = tuple(int(v) for v in triton.__version__.split(".")[:2]) >= (3, 3)


@functools.cache
def _has_cuda() -> bool:
    return torch.cuda.is_available()


class CachedLauncher:
    """Launches one @triton.jit kernel whose constexpr parameters all follow its run-time ones."""

    def __init__(self, kernel) -> None:
        self.kernel = kernel
        self._compiled: dict = {}

    def __call__(self, key, grid: tuple[int, ...], args: tuple, constexprs: dict, **options) -> None:
        """kernel[grid](*args, **constexprs, **options), the compiled kernel looked up by (key, device)."""
        key = (key, torch.cuda.current_device()) if _has_cuda() else key  # a binary is loaded per device
        entry = self._compiled.get(key)
        if entry is not None:
            compiled, trailing = entry
            compiled[(*grid, 1, 1)[:3]](*args, *trailing)  # the launcher takes every parameter, in order
            return
        compiled = self.kernel[grid](*args, **constexprs, **options)
        if DIRECT_LAUNCH and hasattr(compiled, "packed_metadata"):  # compiled (the interpreter returns none)
            names = self.kernel.arg_names[len(args):]
            remember(self._compiled, key, (compiled, tuple(constexprs[name] for name in names)))
