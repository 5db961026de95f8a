"""leaky_relu and its backward: Triton kernels against torch (slopes, out=, in-place, dtypes)."""
import pytest
import torch
import torch.nn.functional as F

from flagstack.ops.challenge.leaky_relu import leaky_relu_backward_triton, leaky_relu_triton
from flagstack.ops.registry import aten_overrides
from tests.ops.challenge.common import FLOAT_DTYPES, UnaryOpSuite, check, covers, make, same_error
from tests.ops.helpers import DEVICE


class TestLeakyRelu(UnaryOpSuite):
    aten = "leaky_relu"
    accepts_int = False

    def ours(self, x, **kw):
        return leaky_relu_triton(x, **kw)

    def theirs(self, x, **kw):
        if "out" in kw:
            return torch.ops.aten.leaky_relu.out(x, 0.01, **kw)
        return F.leaky_relu(x)

    def test_out(self):  # ATen's leaky_relu.out takes no other dtype, so the suite's fp16 case errors
        x = make((6, 7), torch.float32)
        out = torch.empty(7, 6, device=DEVICE).t()
        assert leaky_relu_triton(x, out=out) is out
        check(out, F.leaky_relu(x))
    test_out = covers("out")(test_out)


@covers("params")
@pytest.mark.parametrize("slope", [0.0, 0.2, -0.5, 1.5])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_slopes(slope, dtype):
    x = make((33, 65), dtype)
    check(leaky_relu_triton(x, slope), F.leaky_relu(x, slope))


@covers("inplace", "params")
def test_inplace_with_slope():
    x = make((8, 9), torch.bfloat16)
    y = x.clone()
    assert aten_overrides()["aten::leaky_relu_"](y, 0.3) is y
    check(y, F.leaky_relu(x, 0.3))


@covers("params", "float_dtypes", "noncontiguous", "out")
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("self_is_result", [False, True])
def test_backward(dtype, self_is_result):
    x, grad = make((5, 31), dtype), make((5, 31), dtype)
    expected = torch.ops.aten.leaky_relu_backward(grad, x, 0.2, self_is_result)
    check(leaky_relu_backward_triton(grad, x, 0.2, self_is_result), expected)
    grad_t = make((31, 5), dtype).t()
    out = torch.empty(5, 31, dtype=dtype, device=DEVICE)
    leaky_relu_backward_triton(grad_t, x, 0.2, self_is_result, grad_input=out)
    check(out, torch.ops.aten.leaky_relu_backward(grad_t, x, 0.2, self_is_result))


@covers("params")
def test_backward_matches_autograd():
    x = make((4, 16), torch.float32).requires_grad_()
    grad = make((4, 16), torch.float32)
    F.leaky_relu(x, 0.1).backward(grad)
    check(leaky_relu_backward_triton(grad, x.detach(), 0.1, False), x.grad)


@covers("errors")
def test_errors():
    x = make((4,), torch.float32)
    same_error(lambda: leaky_relu_backward_triton(x, x, -0.2, True),
               lambda: torch.ops.aten.leaky_relu_backward(x, x, -0.2, True))
    ints = make((4,), torch.int64, 0, 5)
    same_error(lambda: leaky_relu_backward_triton(ints, ints, 0.2, False),
               lambda: torch.ops.aten.leaky_relu_backward(ints, ints, 0.2, False))
    for bad in (torch.empty(4, dtype=torch.float16, device=DEVICE), torch.empty(4, dtype=torch.int64, device=DEVICE)):
        same_error(lambda: leaky_relu_triton(x, out=bad), lambda: torch.ops.aten.leaky_relu.out(x, 0.01, out=bad))
