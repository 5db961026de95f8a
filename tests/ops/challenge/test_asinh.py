"""asinh: Triton kernel against torch.asinh (functional, out=, in-place, dtypes, edge values)."""
import torch

from flagstack.ops.challenge.asinh import asinh_triton
from tests.ops.challenge.common import UnaryOpSuite, check, covers
from tests.ops.helpers import DEVICE


class TestAsinh(UnaryOpSuite):
    aten = "asinh"
    low, high = -20.0, 20.0

    def ours(self, x, **kw):
        return asinh_triton(x, **kw)

    def theirs(self, x, **kw):
        return torch.asinh(x, **kw)


@covers("nonfinite", "params")
def test_wide_range():
    # Both sides of the large-|x| branch, tiny values, and the fp32 extremes.
    x = torch.tensor([4095.0, 4097.0, -1e6, 3e38, -3.4e38, 1e-30, -1e-7, 0.5], device=DEVICE)
    check(asinh_triton(x), torch.asinh(x))
    d = torch.tensor([1e-300, -1e300, 2.0], dtype=torch.float64, device=DEVICE)
    torch.testing.assert_close(asinh_triton(d), torch.asinh(d), rtol=1e-12, atol=0)
