"""Shared test helpers: device choice, shapes per device, the challenge's tolerances."""
from __future__ import annotations

import pytest
import torch

from flagstack.ops.selftest import ATOL, RESOLUTION  # the challenge's tolerances, one source

ON_GPU = torch.cuda.is_available()
DEVICE = "cuda" if ON_GPU else "cpu"
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
gpu_only = pytest.mark.skipif(not ON_GPU, reason="needs CUDA")


def assert_close(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype | None = None,
                 reduce_dim: int = 1, atol: float = ATOL) -> None:
    """Compare with the challenge's tolerance for `dtype` (default: ref's dtype); NaNs must match."""
    dtype = dtype or ref.dtype
    assert out.shape == ref.shape, f"shape {tuple(out.shape)} != {tuple(ref.shape)}"
    assert out.dtype == ref.dtype, f"dtype {out.dtype} != {ref.dtype}"
    torch.testing.assert_close(out, ref, rtol=RESOLUTION.get(dtype, 0.0), atol=atol * reduce_dim,
                               equal_nan=True)


def rows_for_device(small: list[int], big: list[int]) -> list[int]:
    """Small row counts under the CPU interpreter, real ones on a GPU."""
    return big if ON_GPU else small
