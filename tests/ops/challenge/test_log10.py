"""log10: Triton kernel against torch.log10 (functional, out=, in-place, dtypes, edge values)."""
import torch

from flagstack.ops.challenge.log10 import log10_triton
from tests.ops.challenge.common import UnaryOpSuite, check, covers, make


class TestLog10(UnaryOpSuite):
    aten = "log10"
    low, high = 0.0, 1000.0

    def ours(self, x, **kw):
        return log10_triton(x, **kw)

    def theirs(self, x, **kw):
        return torch.log10(x, **kw)


@covers("nonfinite")
def test_negative_zero_and_tiny_inputs():
    x = torch.tensor([-1.0, -0.0, 1e-38, 1e-45, 1.0, 10.0, 3.4e38], device=make((1,), torch.float32).device)
    check(log10_triton(x), torch.log10(x))
