"""Helpers for the host side of kernel launches: integer arithmetic, tile shapes, the SM count.

In Triton 3.6 `triton.cdiv` and `triton.next_power_of_2` are constexpr_functions: called from Python
each costs ~12 us (measured on the CI box), more than a whole small kernel on an H100, and a
wrapper calling four of them was slower than its kernel. Launch code uses these plain versions.
"""
from __future__ import annotations

import functools

import torch


def cdiv(a: int, b: int) -> int:
    """ceil(a / b) for integers (b > 0)."""
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    """The smallest power of 2 >= n, for n >= 1 (0 stays 0, as in triton.next_power_of_2)."""
    return 1 << (n - 1).bit_length() if n > 0 else 0


def row_tile(n_cols: int, elements: int) -> tuple[int, int]:
    """(rows, cols) of a 2-D tile of `elements` (a power of 2) for rows n_cols wide.

    cols is the largest power of 2 <= elements that divides n_cols when that is >= 128, so no lane
    is masked off (2560 -> 512 x 8 rows, 9728 -> 512 x 8); otherwise n_cols rounded up to a power of 2
    (capped at `elements`). Rows fill the rest of the tile.
    """
    low_bit = n_cols & -n_cols
    cols = min(low_bit, elements) if low_bit >= 128 else min(next_power_of_2(n_cols), elements)
    return max(1, elements // cols), cols


@functools.lru_cache(maxsize=None)
def _cuda_sms(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def sm_count(device: torch.device, cpu: int) -> int:
    """Streaming multiprocessors of a CUDA device (queried once per device); `cpu` elsewhere, a
    small count chosen by the caller so that CPU tests under the interpreter reach its split paths."""
    if device.type != "cuda":
        return cpu
    return _cuda_sms(device.index if device.index is not None else torch.cuda.current_device())
