"""Shared test helpers: device choice, shapes per device, the challenge's tolerances."""
from __future__ import annotations

import pytest
import torch

ON_GPU = torch.cuda.is_available()
DEVICE = "cuda" if ON_GPU else "cpu"
# The challenge's per-dtype resolutions, applied as FlagGems' gems_assert_close does: they are the
# relative tolerance, with an absolute tolerance of 1e-4 (times the reduced length where a result
# sums many terms). One bf16 ulp is 2^-8 relative, well inside 0.016.
RESOLUTION = {torch.float16: 1e-3, torch.bfloat16: 0.016, torch.float32: 1.3e-6}
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
gpu_only = pytest.mark.skipif(not ON_GPU, reason="needs CUDA")


def assert_close(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype | None = None,
                 reduce_dim: int = 1, atol: float = 1e-4) -> None:
    """Compare with the challenge's tolerance for `dtype` (default: ref's dtype); NaNs must match."""
    dtype = dtype or ref.dtype
    assert out.shape == ref.shape, f"shape {tuple(out.shape)} != {tuple(ref.shape)}"
    assert out.dtype == ref.dtype, f"dtype {out.dtype} != {ref.dtype}"
    torch.testing.assert_close(out, ref, rtol=RESOLUTION.get(dtype, 0.0), atol=atol * reduce_dim,
                               equal_nan=True)


def rows_for_device(small: list[int], big: list[int]) -> list[int]:
    """Small row counts under the CPU interpreter, real ones on a GPU."""
    return big if ON_GPU else small
