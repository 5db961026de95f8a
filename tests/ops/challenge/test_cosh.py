"""cosh: Triton kernel against torch.cosh (functional, out=, in-place, dtypes, edge values)."""
import torch

from flagstack.ops.challenge.cosh import cosh_triton
from tests.ops.challenge.common import UnaryOpSuite, check, covers
from tests.ops.helpers import DEVICE


class TestCosh(UnaryOpSuite):
    aten = "cosh"
    low, high = -10.0, 10.0

    def ours(self, x, **kw):
        return cosh_triton(x, **kw)

    def theirs(self, x, **kw):
        return torch.cosh(x, **kw)


@covers("nonfinite", "params")
def test_near_overflow():
    # fp32 cosh stays finite to |x| = 89.4 although e^x overflows at 88.7; fp16 overflows at 11.8.
    x = torch.tensor([80.0, -88.9, 89.3, 89.5, 1e-20], device=DEVICE)
    check(cosh_triton(x), torch.cosh(x))
    h = torch.tensor([11.0, 11.7, 11.8, 12.0], dtype=torch.float16, device=DEVICE)
    check(cosh_triton(h), torch.cosh(h))
    d = torch.tensor([700.0, 710.0, 711.0], dtype=torch.float64, device=DEVICE)
    torch.testing.assert_close(cosh_triton(d), torch.cosh(d), rtol=1e-12, atol=0)
