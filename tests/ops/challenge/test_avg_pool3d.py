"""avg_pool3d and its backward: Triton kernels against aten::avg_pool3d[_backward] (kernel/stride/padding,
ceil_mode, count_include_pad, divisor_override, 4-D and 5-D, dtypes, inf/nan, layouts, out= forms,
error parity, F.avg_pool3d autograd through the ATen overrides)."""
import sys

import pytest
import torch
import torch.nn.functional as F

from flagstack.ops.challenge.avg_pool3d import avg_pool3d_backward_triton, avg_pool3d_triton
from flagstack.ops.registry import aten_overrides
from tests.ops.challenge.common import (FLOAT_DTYPES, INT_DTYPES, check, covers, large_only_on_gpu, make, same_error,
                                        through_overrides)
from tests.ops.helpers import DEVICE, ON_GPU

pool_module = sys.modules["flagstack.ops.challenge.avg_pool3d"]
aten_forward, aten_backward = torch.ops.aten.avg_pool3d, torch.ops.aten.avg_pool3d_backward
# (input shape, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)
CASES = [((2, 2, 5, 6, 7), [3], [2], [1], False, True, None),  # the core shape's parameters
         ((3, 5, 6, 7), [2, 3, 2], [1, 2, 3], [1, 0, 1], True, False, None),  # 4-D, mixed, ceil, no pad count
         ((1, 2, 5, 9, 6), [3], [], [1], True, True, None),  # stride omitted = kernel; ceil windows past the pad
         ((2, 1, 4, 4, 11), [1, 2, 3], [2], [0, 1, 1], False, False, 5),  # divisor_override
         ((1, 1, 1, 1, 1), [1], [1], [0], False, True, None)]


def widened(fn, *args):
    """fn on fp32 copies of fp16/bf16 tensors, cast back: we sum in fp32 and round once (and torch's
    CPU avg_pool3d has no fp16 kernel)."""
    dtype = next(a.dtype for a in args if isinstance(a, torch.Tensor))
    wide = [a.float() if isinstance(a, torch.Tensor) and a.dtype in (torch.float16, torch.bfloat16) else a
            for a in args]
    return fn(*wide).to(dtype)


@covers("small", "regular", "ranks", "params", "float_dtypes")
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("case", CASES)
def test_forward_and_backward(case, dtype):
    shape, *params = case
    x = make(shape, dtype)
    expected = widened(aten_forward, x, *params)
    check(avg_pool3d_triton(x, *params), expected)
    grad = make(expected.shape, dtype)
    check(avg_pool3d_backward_triton(grad, x, *params), widened(aten_backward, grad, x, *params))


@covers("params")
@pytest.mark.parametrize("ceil_mode", [False, True])
@pytest.mark.parametrize("count_include_pad", [False, True])
@pytest.mark.parametrize("divisor_override", [None, 3])
def test_divisor_rules(ceil_mode, count_include_pad, divisor_override):
    x = make((1, 2, 7, 6, 5), torch.float32)
    params = ([3, 2, 3], [2, 2, 3], [1, 1, 1], ceil_mode, count_include_pad, divisor_override)
    expected = aten_forward(x, *params)
    check(avg_pool3d_triton(x, *params), expected)
    grad = make(expected.shape, torch.float32)
    check(avg_pool3d_backward_triton(grad, x, *params), aten_backward(grad, x, *params))


@covers("large")
@large_only_on_gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_large(dtype):
    x = make((8, 32, 32, 64, 64), dtype)
    params = ([3], [2], [1], False, True, None)
    expected = widened(aten_forward, x, *params)
    check(avg_pool3d_triton(x, *params), expected)
    grad = make(expected.shape, dtype)
    check(avg_pool3d_backward_triton(grad, x, *params), widened(aten_backward, grad, x, *params))


@covers("int_dtypes", "errors")
@pytest.mark.parametrize("dtype", INT_DTYPES + [torch.bool])
def test_integers(dtype):
    """Float dtypes only, as ATen's CUDA kernel (its CPU kernel also averages int64, truncating)."""
    x = make((2, 3, 5, 6, 7), dtype, 0, 9)
    if ON_GPU or dtype != torch.int64:
        same_error(lambda: avg_pool3d_triton(x, [2]), lambda: aten_forward(x, [2]))
    with pytest.raises(NotImplementedError):
        avg_pool3d_triton(x, [2])


@covers("nonfinite")
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_nonfinite(dtype):
    x = make((1, 2, 4, 5, 6), dtype)
    x[0, 0, 1, 2, 1] = float("nan")
    x[0, 1, 0, 0, 0] = float("inf")
    x[0, 1, 3, 4, 5] = float("-inf")
    x[0, 0, 3, 0, :] = -0.0
    for params in ([2], [1], [0], False, True, None), ([3], [2], [1], True, False, None):
        expected = widened(aten_forward, x, *params)
        check(avg_pool3d_triton(x, *params), expected)
        grad = torch.full_like(expected, float("inf"))
        check(avg_pool3d_backward_triton(grad, x, *params), widened(aten_backward, grad, x, *params))


@covers("empty", "errors")
def test_empty():
    x = torch.empty(0, 3, 4, 5, 6, device=DEVICE)
    out = avg_pool3d_triton(x, [2])
    assert out.shape == (0, 3, 2, 2, 3)
    assert avg_pool3d_backward_triton(torch.empty(out.shape, device=DEVICE), x, [2], [], [0], False, True,
                                      None).shape == x.shape
    no_channels = torch.empty(2, 0, 4, 5, 6, device=DEVICE)
    same_error(lambda: avg_pool3d_triton(no_channels, [2]), lambda: aten_forward(no_channels, [2]))


@covers("noncontiguous")
def test_noncontiguous():
    base = make((2, 2, 6, 5, 10), torch.float32)
    params = ([3], [2], [1], True, False, None)
    for x in (base.transpose(2, 4), base[:, ::2, 1:, :, ::3], base.contiguous(memory_format=torch.channels_last_3d),
              base[0].unsqueeze(0).expand(2, 2, 6, 5, 10)):
        expected = aten_forward(x, *params)
        check(avg_pool3d_triton(x, *params), expected)
        grad = make(expected.shape[::-1], torch.float32).permute(4, 3, 2, 1, 0)
        check(avg_pool3d_backward_triton(grad, x, *params), aten_backward(grad, x, *params))


@covers("out")
def test_out_forms():
    x = make((1, 2, 5, 6, 7), torch.float32)
    params = ([3], [2], [1], False, True, None)
    expected = aten_forward(x, *params)
    overrides = aten_overrides()
    out = torch.empty(0, device=DEVICE)
    assert overrides["aten::avg_pool3d.out"](x, *params, out=out) is out
    check(out, expected)
    strided = torch.empty(expected.shape[::-1], device=DEVICE).permute(4, 3, 2, 1, 0)
    assert avg_pool3d_triton(x, *params, out=strided) is strided
    check(strided, expected)
    with pytest.warns(UserWarning, match="resized"):
        check(avg_pool3d_triton(x, *params, out=torch.empty(3, device=DEVICE)), expected)
    check(overrides["aten::avg_pool3d"](x, *params), expected)
    grad = make(expected.shape, torch.float32)
    expected_grad = aten_backward(grad, x, *params)
    grad_input = torch.empty(x.shape[::-1], device=DEVICE).permute(4, 3, 2, 1, 0)
    assert overrides["aten::avg_pool3d_backward.grad_input"](grad, x, *params, grad_input=grad_input) is grad_input
    check(grad_input, expected_grad)
    check(overrides["aten::avg_pool3d_backward"](grad, x, *params), expected_grad)


@covers("errors")
def test_errors():
    x = make((2, 3, 5, 6, 7), torch.float32)
    bad = [(x, [2, 2]), (x, [2], [2, 2]), (x, [2], [2], [1, 1]), (x, [0]), (x, [2], [0]), (x, [2], [1], [2]),
           (x, [6], [1], [0]), (x[0, 0], [2]), (x, [2], [1], [0], False, True, 0)]
    for args in bad:
        same_error(lambda: avg_pool3d_triton(*args), lambda: aten_forward(*args))
    wrong_out = torch.empty(0, dtype=torch.float64, device=DEVICE)
    same_error(lambda: avg_pool3d_triton(x, [2], out=wrong_out),
               lambda: torch.ops.aten.avg_pool3d.out(x, [2], out=wrong_out))
    with pytest.raises(RuntimeError):
        avg_pool3d_backward_triton(make((2, 3, 1, 1, 1), torch.float32), x, [2], [], [0], False, True, None)


@covers("params")
def test_through_the_dispatcher(monkeypatch):
    """F.avg_pool3d and its autograd reach our kernels once flagstack.ops.enable() installs them."""
    calls = []
    argument_check = pool_module._check  # both the forward and the backward call it
    monkeypatch.setattr(pool_module, "_check", lambda *a: calls.append(a[-1]) or argument_check(*a))
    x = make((2, 2, 5, 6, 7), torch.float32)
    (expected, expected_grad), (result, x_grad) = through_overrides(
        lambda x: F.avg_pool3d(x, 3, 2, 1, ceil_mode=True, count_include_pad=False), x,
        ["aten::avg_pool3d", "aten::avg_pool3d_backward"])
    check(result, expected)
    check(x_grad, expected_grad)
    assert calls == ["avg_pool3d", "avg_pool3d_backward"]
