"""ops.interpreter_compat: under TRITON_INTERPRET=1 a kernel's fp32 -> bf16 cast rounds to nearest even, as
on the GPU and as torch's .to(bfloat16) does (the stock interpreter truncates)."""
import pytest
import torch
import triton
import triton.language as tl

import flagstack.ops  # noqa: F401  (installs the interpreter patches)
from tests.ops.helpers import DEVICE


@triton.jit
def _to_bf16_kernel(x_ptr, y_ptr, N: tl.constexpr):
    offsets = tl.arange(0, N)
    tl.store(y_ptr + offsets, tl.load(x_ptr + offsets).to(tl.bfloat16))


@pytest.mark.parametrize("scale", [1e-40, 1.0, 3e38])  # subnormal, normal, rounding up to inf
def test_fp32_to_bf16_rounds_like_torch(scale):
    x = torch.randn(1024, device=DEVICE) * scale
    x[:5] = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.0, -0.0])
    x[5] = 1.0 + 2 ** -8  # a tie: rounds to the even neighbour 1.0
    x[6] = 1.0 + 3 * 2 ** -8  # a tie: rounds up to the even neighbour
    y = torch.empty(1024, dtype=torch.bfloat16, device=DEVICE)
    _to_bf16_kernel[(1,)](x, y, N=1024)
    want = x.to(torch.bfloat16)
    assert y[0].isnan()
    assert torch.equal(y[1:].view(torch.int16), want[1:].view(torch.int16))
    assert y[5].item() == 1.0 and y[6].item() == 1.0 + 2 ** -6
