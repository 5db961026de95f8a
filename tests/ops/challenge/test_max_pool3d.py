"""max_pool3d with indices and its backward: Triton kernels against aten::max_pool3d_with_indices[_backward]
(values and indices exact; kernel/stride/padding/dilation/ceil_mode, 4-D and 5-D, dtypes, NaN/inf,
layouts, out= forms, error parity, F.max_pool3d autograd through the ATen overrides)."""
import sys

import pytest
import torch
import torch.nn.functional as F

from flagstack.ops.challenge.max_pool3d import max_pool3d_with_indices_backward_triton, max_pool3d_with_indices_triton
from flagstack.ops.registry import aten_overrides
from tests.ops.challenge.common import (FLOAT_DTYPES, INT_DTYPES, check, covers, large_only_on_gpu, make, same_error,
                                        through_overrides)
from tests.ops.helpers import DEVICE

pool_module = sys.modules["flagstack.ops.challenge.max_pool3d"]
aten_forward, aten_backward = torch.ops.aten.max_pool3d_with_indices, torch.ops.aten.max_pool3d_with_indices_backward
# (input shape, kernel_size, stride, padding, dilation, ceil_mode)
CASES = [((2, 2, 5, 6, 7), [3], [2], [1], [1], False),  # the core shape's parameters
         ((3, 5, 6, 7), [2, 3, 2], [1, 2, 3], [1, 0, 1], [2, 1, 1], True),  # 4-D, mixed, dilated, ceil
         ((1, 2, 5, 9, 6), [3], [], [0], [1], True),  # stride omitted = kernel
         ((2, 1, 4, 4, 11), [1, 2, 3], [2], [0, 1, 1], [1, 2, 3], False),
         ((1, 1, 1, 1, 1), [1], [1], [0], [1], False)]


def check_forward(x, *params):
    values, indices = max_pool3d_with_indices_triton(x, *params)
    ref_values, ref_indices = aten_forward(x, *params)
    check(values, ref_values, exact=True)
    check(indices, ref_indices, exact=True)
    return ref_values, ref_indices


@covers("small", "regular", "ranks", "params", "float_dtypes")
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("case", CASES)
def test_forward_and_backward(case, dtype):
    shape, *params = case
    x = make(shape, dtype)
    _, indices = check_forward(x, *params)
    grad = make(indices.shape, dtype)
    expected = aten_backward(grad.float(), x.float(), *params, indices).to(dtype)  # fp32 sums, rounded once
    check(max_pool3d_with_indices_backward_triton(grad, x, *params, indices), expected)


@covers("large")
@large_only_on_gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_large(dtype):
    x = make((8, 32, 32, 64, 64), dtype)
    _, indices = check_forward(x, [3], [2], [1], [1], False)
    grad = make(indices.shape, torch.float32)
    check(max_pool3d_with_indices_backward_triton(grad, x.float(), [3], [2], [1], [1], False, indices),
          aten_backward(grad, x.float(), [3], [2], [1], [1], False, indices))


@covers("int_dtypes", "errors")
@pytest.mark.parametrize("dtype", INT_DTYPES)
def test_integers(dtype):
    """ATen pools integers on CPU only (its CUDA kernel dispatches floating types): ours matches both."""
    x = make((2, 3, 5, 6, 7), dtype, -50, 50)
    params = ([3], [2], [1], [1], True), ([2], [1], [0], [2], False)
    if x.is_cuda:
        for args in params:
            same_error(lambda: max_pool3d_with_indices_triton(x, *args), lambda: aten_forward(x, *args))
        return
    for args in params:
        _, indices = check_forward(x, *args)
    grad = make(indices.shape, dtype)
    with pytest.raises(NotImplementedError):  # no integer gradients, as ATen's CUDA kernel
        max_pool3d_with_indices_backward_triton(grad, x, *args, indices)


@covers("nonfinite")
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_nonfinite(dtype):
    """A NaN wins (the last one of a window), inf wins, a window of -inf points at its first element."""
    x = make((1, 2, 4, 5, 6), dtype)
    x[0, 0, 1, 2, :3] = float("nan")
    x[0, 0, 2, 2, 4] = float("nan")
    x[0, 1, 0, 0, 0] = float("inf")
    x[0, 1, 2:, 3:] = float("-inf")
    x[0, 0, 3, 0, :] = -0.0
    for params in ([2], [1], [0], [1], False), ([3], [2], [1], [1], True):
        check_forward(x, *params)


@covers("empty", "errors")
def test_empty():
    x = torch.empty(0, 3, 4, 5, 6, device=DEVICE)
    values, indices = max_pool3d_with_indices_triton(x, [2])
    assert values.shape == indices.shape == (0, 3, 2, 2, 3)
    grad = torch.empty(values.shape, device=DEVICE)
    assert max_pool3d_with_indices_backward_triton(grad, x, [2], [], [0], [1], False, indices).shape == x.shape
    no_channels = torch.empty(2, 0, 4, 5, 6, device=DEVICE)
    same_error(lambda: max_pool3d_with_indices_triton(no_channels, [2]), lambda: aten_forward(no_channels, [2]))


@covers("noncontiguous")
def test_noncontiguous():
    base = make((2, 2, 6, 5, 10), torch.float32)
    params = ([3], [2], [1], [1], True)
    for x in (base.transpose(2, 4), base[:, ::2, 1:, :, ::3], base.contiguous(memory_format=torch.channels_last_3d),
              base[0].unsqueeze(0).expand(2, 2, 6, 5, 10)):
        _, indices = check_forward(x, *params)
        grad = make(indices.shape[::-1], torch.float32).permute(4, 3, 2, 1, 0)  # a transposed gradient
        check(max_pool3d_with_indices_backward_triton(grad, x, *params, indices),
              aten_backward(grad, x, *params, indices))


@covers("out")
def test_out_forms():
    x = make((1, 2, 5, 6, 7), torch.float32)
    params = ([3], [2], [1], [1], False)
    ref_values, ref_indices = aten_forward(x, *params)
    overrides = aten_overrides()
    out, indices = torch.empty(0, device=DEVICE), torch.empty(0, dtype=torch.int64, device=DEVICE)
    result = overrides["aten::max_pool3d_with_indices.out"](x, *params, out=out, indices=indices)
    assert result[0] is out and result[1] is indices
    check(out, ref_values, exact=True)
    check(indices, ref_indices, exact=True)
    strided = torch.empty(ref_values.shape[::-1], device=DEVICE).permute(4, 3, 2, 1, 0)
    with pytest.warns(UserWarning, match="resized"):
        max_pool3d_with_indices_triton(x, *params, out=strided, indices=torch.empty(3, dtype=torch.int64,
                                                                                    device=DEVICE))
    check(strided, ref_values, exact=True)
    grad = make(ref_values.shape, torch.float32)
    expected = aten_backward(grad, x, *params, ref_indices)
    grad_input = torch.empty(x.shape[::-1], device=DEVICE).permute(4, 3, 2, 1, 0)
    assert overrides["aten::max_pool3d_with_indices_backward.grad_input"](
        grad, x, *params, ref_indices, grad_input=grad_input) is grad_input
    check(grad_input, expected)
    check(overrides["aten::max_pool3d_with_indices_backward"](grad, x, *params, ref_indices), expected)


@covers("errors")
def test_errors():
    x = make((2, 3, 5, 6, 7), torch.float32)
    bad = [(x, [2, 2], [1], [0], [1]), (x, [2], [2, 2], [0], [1]), (x, [2], [2], [1, 1], [1]),
           (x, [2], [2], [0], [1, 1]), (x, [0], [2], [0], [1]), (x, [2], [0], [0], [1]), (x, [2], [1], [0], [0]),
           (x, [2], [1], [2], [1]), (x, [6], [1], [0], [1]), (x[0, 0], [2], [1], [0], [1]),
           (make((3, 4, 5, 6), torch.float64).to(torch.bool), [2], [1], [0], [1])]
    for args in bad:
        same_error(lambda: max_pool3d_with_indices_triton(*args), lambda: aten_forward(*args))
    params = ([2], [1], [0], [1], False)
    values, indices = aten_forward(x, *params)
    wrong_out = torch.empty(0, dtype=torch.float64, device=DEVICE)
    same_error(lambda: max_pool3d_with_indices_triton(x, *params, out=wrong_out, indices=indices.clone()),
               lambda: torch.ops.aten.max_pool3d_with_indices.out(x, *params, out=wrong_out, indices=indices.clone()))
    with pytest.raises(RuntimeError):
        max_pool3d_with_indices_backward_triton(values[:, :1], x, *params, indices)


@covers("params")
def test_through_the_dispatcher(monkeypatch):
    """F.max_pool3d and its autograd reach our kernels once flagstack.ops.enable() installs them."""
    calls = []
    shape_check = pool_module.check_pool3d  # both the forward and the backward call it
    monkeypatch.setattr(pool_module, "check_pool3d", lambda *a: calls.append(a[-1]) or shape_check(*a))
    ((expected, expected_indices), expected_grad), ((values, indices), x_grad) = through_overrides(
        lambda x: F.max_pool3d(x, 3, 2, 1, ceil_mode=True, return_indices=True), make((2, 2, 5, 6, 7), torch.float32),
        ["aten::max_pool3d_with_indices", "aten::max_pool3d_with_indices_backward"])
    check(values, expected, exact=True)
    check(indices, expected_indices, exact=True)
    check(x_grad, expected_grad)
    assert len(calls) == 2
