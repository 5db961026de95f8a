"""Programmatic dependent launch (PDL, Hopper and newer) for the kernels of a decode step.

A batch-1 decode step is ~400 small kernels in a row, and each one's start (launch, first loads) waits for
the one before it to drain. A kernel launched as a programmatic dependent may instead start while its
predecessor finishes: it must then wait (`gdc_wait`) before it reads anything an earlier kernel wrote, and it
lets its own dependent start (`gdc_launch_dependents`) once it has passed that wait, so the order of every
read after a write is kept. Reads of data no kernel writes (weights) may go before the wait: the GEMV streams
its first weight tile during the previous kernel's tail. Measured on an H100 (36 x 4 Qwen3-4B GEMVs in one
CUDA graph): 2.83 -> 2.72 ms (bench/results/pdl-probe-*). FLAGSTACK_PDL=0 turns it off; it is off elsewhere
than on CUDA.
"""
from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait


@functools.lru_cache(maxsize=None)
def _hopper_or_newer(index: int) -> bool:
    return torch.cuda.get_device_capability(index)[0] >= 9


def use_pdl(device: torch.device) -> bool:
    """Whether kernels on `device` launch as programmatic dependents."""
    if device.type != "cuda" or os.environ.get("FLAGSTACK_PDL", "1") == "0":
        return False
    return _hopper_or_newer(device.index if device.index is not None else torch.cuda.current_device())


def pdl_launch(device: torch.device) -> dict:
    """Launch keywords of a kernel that calls pdl_wait: its USE_PDL switch and Triton's launch_pdl."""
    pdl = use_pdl(device)
    return {"USE_PDL": pdl, "launch_pdl": pdl}


@triton.jit
def pdl_wait(USE_PDL: tl.constexpr):
    """Wait for the kernels before this one, then let the next one start (no-op unless USE_PDL)."""
    if USE_PDL:
        gdc_wait()
        gdc_launch_dependents()
