"""smooth_l1_loss and its backward: Triton kernels against aten::smooth_l1_loss[_backward] and autograd
(reductions, beta, broadcasting, dtypes, out=, grad_input=, error parity)."""
import sys

import pytest
import torch
import torch.nn.functional as F

from flagstack.ops.challenge.smooth_l1_loss import (smooth_l1_loss_backward_triton, smooth_l1_loss_reference,
                                                    smooth_l1_loss_triton)
from flagstack.ops.registry import aten_overrides
from tests.ops.challenge.common import (FLOAT_DTYPES, INT_DTYPES, LARGE_SHAPES, REGULAR_SHAPES, SMALL_SHAPES, check,
                                        covers, large_only_on_gpu, make, nonfinite, same_error, through_overrides)
from tests.ops.helpers import DEVICE, ON_GPU

REDUCTIONS = [0, 1, 2]
aten_backward = torch.ops.aten.smooth_l1_loss_backward


def upcast(fn, *args):
    """fn's result in torch's dtype, computed from fp32 copies of fp16/bf16 inputs (FlagGems' reference
    convention): torch rounds each fp16/bf16 step, our kernels compute in fp32 and round once."""
    dtype = fn(*args).dtype
    wide = [a.float() if isinstance(a, torch.Tensor) and a.dtype in (torch.float16, torch.bfloat16) else a
            for a in args]
    return fn(*wide).to(dtype)


def reference(*args):
    return upcast(smooth_l1_loss_reference, *args)


def reference_backward(*args):
    return upcast(aten_backward, *args)


def grad_for(reduction, shape, dtype):
    """The upstream gradient: 0-dim for a reduced loss, else one per element."""
    return make(() if reduction else shape, dtype)


@covers("small", "regular", "ranks", "float_dtypes", "params")
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("shape", SMALL_SHAPES + REGULAR_SHAPES + [(), (100, 400)])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_forward(shape, dtype, reduction):
    x, y = make(shape, dtype), make(shape, dtype)
    check(smooth_l1_loss_triton(x, y, reduction), reference(x, y, reduction))


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_repeated_calls_keep_alignment_apart(reduction):
    # The reduction's kernels are launched by a key of their arguments (launch_cache.py): an input 4 bytes past
    # an aligned address, otherwise identical, must still get its own result on first and repeated calls.
    x, y = make((37, 300), torch.float32), make((37, 300), torch.float32)
    shifted = make((1 + x.numel(),), torch.float32)[1:].view(x.shape).copy_(x)
    for _ in range(2):
        for inp in (x, shifted):
            check(smooth_l1_loss_triton(inp, y, reduction), reference(inp, y, reduction))


@covers("params")
@pytest.mark.parametrize("beta", [0.0, 0.3, 1.0, 4.0])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_beta_and_reduction_names(beta, reduction):
    x, y = make((13, 40), torch.float32), make((13, 40), torch.float32)
    check(smooth_l1_loss_triton(x, y, reduction, beta), F.smooth_l1_loss(x, y, reduction=reduction, beta=beta))


@covers("large")
@large_only_on_gpu
@pytest.mark.parametrize("shape", LARGE_SHAPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_large(shape, reduction):
    x, y = make(shape, torch.float32), make(shape, torch.float32)
    check(smooth_l1_loss_triton(x, y, reduction), reference(x, y, reduction))
    grad = grad_for(reduction, shape, torch.float32)
    check(smooth_l1_loss_backward_triton(grad, x, y, reduction, 0.5), aten_backward(grad, x, y, reduction, 0.5))


@covers("params", "ranks")
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_broadcast_and_promotion(reduction):
    x, y = make((3, 1, 17), torch.float16), make((5, 1), torch.float32)
    check(smooth_l1_loss_triton(x, y, reduction), reference(x, y, reduction))
    check(smooth_l1_loss_triton(y, x, reduction, 0.5), reference(y, x, reduction, 0.5))


@covers("int_dtypes", "errors")
@pytest.mark.parametrize("dtype", INT_DTYPES + [torch.bool])
def test_integer_inputs(dtype):
    ints, floats = make((4, 6), dtype, 0, 5), make((4, 6), torch.float32)
    same_error(lambda: smooth_l1_loss_triton(ints, ints), lambda: smooth_l1_loss_reference(ints, ints))
    check(smooth_l1_loss_triton(ints, floats, 0), smooth_l1_loss_reference(ints, floats, 0))  # promoted to float
    check(smooth_l1_loss_triton(floats, ints, 2), smooth_l1_loss_reference(floats, ints, 2))


@covers("nonfinite")
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_nonfinite(dtype):
    x = nonfinite(dtype)
    y = x.flip(0)
    for reduction in REDUCTIONS:
        check(smooth_l1_loss_triton(x, y, reduction), reference(x, y, reduction))
    finite = torch.tensor([-0.0, 0.0, 1.0, -2.0], dtype=dtype, device=DEVICE)
    check(smooth_l1_loss_triton(finite, torch.full_like(finite, float("inf")), 1),
          reference(finite, torch.full_like(finite, float("inf")), 1))
    grad = make((8,), dtype)
    check(smooth_l1_loss_backward_triton(grad, x, y, 0, 1.0), reference_backward(grad, x, y, 0, 1.0))


@covers("empty")
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_empty(reduction):
    x = torch.empty(0, 3, device=DEVICE)
    check(smooth_l1_loss_triton(x, x, reduction), smooth_l1_loss_reference(x, x, reduction))  # mean: nan
    grad = grad_for(reduction, (0, 3), torch.float32)
    check(smooth_l1_loss_backward_triton(grad, x, x, reduction, 1.0), aten_backward(grad, x, x, reduction, 1.0))


@covers("noncontiguous")
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_noncontiguous(reduction):
    base_x, base_y = make((20, 34), torch.float32), make((34, 20), torch.float32)
    for x, y in ((base_x.t(), base_y), (base_x[::2, 1::3], base_y.t()[::2, 1::3]),
                 (base_x.t(), base_x.t() + 0.5), (base_x[:1].expand(20, 34), base_y.t())):
        check(smooth_l1_loss_triton(x, y, reduction), reference(x, y, reduction))
        grad = grad_for(reduction, x.shape, torch.float32)
        grad = grad if reduction else grad.t().contiguous().t()
        check(smooth_l1_loss_backward_triton(grad, x, y, reduction, 0.7), aten_backward(grad, x, y, reduction, 0.7))


@covers("out")
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_out(reduction):
    x, y = make((6, 7), torch.float32), make((6, 7), torch.float32)
    expected = smooth_l1_loss_reference(x, y, reduction)
    out = torch.empty_like(expected)
    assert smooth_l1_loss_triton(x, y, reduction, out=out) is out
    check(out, expected)
    half = torch.empty_like(expected, dtype=torch.float16)
    check(smooth_l1_loss_triton(x, y, reduction, out=half),
          smooth_l1_loss_reference(x, y, reduction, out=torch.empty_like(half)))
    with pytest.warns(UserWarning, match="resized"):
        check(smooth_l1_loss_triton(x, y, reduction, out=torch.empty(2, 2, device=DEVICE)), expected)


@covers("out")
@pytest.mark.parametrize("dtype", [torch.float16] + ([torch.bfloat16] if ON_GPU else []))
def test_out_of_another_dtype_follows_aten_cuda(monkeypatch, dtype):
    """ATen's CUDA kernel computes an out= of another dtype in that dtype: x, y and d = x - y are rounded
    to it, the loss then comes from d (its CPU kernel computes in fp32 and casts). On CPU the kernel is
    switched to that rule, against torch computing the same steps (fp16 only: the interpreter casts fp32
    to bf16 by truncation, a GPU rounds to nearest)."""
    monkeypatch.setattr(sys.modules[smooth_l1_loss_triton.__module__], "follows_aten_cuda", lambda t: True)
    x, y = make((6, 7), torch.float32, 0.9, 1.1), torch.ones(6, 7, device=DEVICE)  # small d: rounding shows
    out = torch.empty(6, 7, dtype=dtype, device=DEVICE)
    d = (x.to(dtype) - y.to(dtype)).float()
    expected = smooth_l1_loss_reference(d, torch.zeros_like(d), 0, 1.0).to(dtype)
    check(smooth_l1_loss_triton(x, y, 0, 1.0, out=out), expected)
    assert not torch.equal(expected, smooth_l1_loss_reference(x, y, 0, 1.0).to(dtype))  # the CPU rule differs
    if ON_GPU:
        check(out, smooth_l1_loss_reference(x, y, 0, 1.0, out=torch.empty_like(out)))


@covers("params", "nonfinite")
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_backward_at_zero_beta(monkeypatch, dtype):
    """beta = 0 and d = 0: ATen's CPU backward gives -grad, its CUDA one 0 / 0 = nan; each device's rule."""
    x = torch.tensor([0.0, 0.5, -0.5, 2.0, float("nan"), -0.0], dtype=dtype, device=DEVICE)
    y = torch.tensor([0.0, 0.0, 0.0, 2.0, 0.0, 0.0], dtype=dtype, device=DEVICE)
    grad = torch.full_like(x, 3.0)
    check(smooth_l1_loss_backward_triton(grad, x, y, 0, 0.0), aten_backward(grad, x, y, 0, 0.0))
    nan = float("nan")
    monkeypatch.setattr(sys.modules[smooth_l1_loss_triton.__module__], "follows_aten_cuda", lambda t: True)
    cuda_rule = torch.tensor([nan, 3.0, -3.0, nan, nan, nan], dtype=dtype, device=DEVICE)
    check(smooth_l1_loss_backward_triton(grad, x, y, 0, 0.0), cuda_rule)
    check(smooth_l1_loss_backward_triton(grad[0], x, y, 2, 0.0), cuda_rule)  # the 0-dim grad kernel


@covers("errors", "ranks")
def test_backward_shapes():
    """grad_input has the broadcast shape of grad, input and target (ATen resizes input's zeros to it);
    shapes that do not broadcast raise ATen's error."""
    x, y = make((3, 4), torch.float32), make((3, 4), torch.float32)
    for grad in (make((2, 3, 4), torch.float32), make((3, 1), torch.float32)):
        check(smooth_l1_loss_backward_triton(grad, x, y, 0, 1.0), aten_backward(grad, x, y, 0, 1.0))
    wide_target = make((2, 1, 4), torch.float32)
    grad = make((2, 3, 4), torch.float32)
    check(smooth_l1_loss_backward_triton(grad, x, wide_target, 0, 1.0), aten_backward(grad, x, wide_target, 0, 1.0))
    for bad_grad in (make((2, 4), torch.float32), make((3, 5), torch.float32)):
        same_error(lambda: smooth_l1_loss_backward_triton(bad_grad, x, y, 0, 1.0),
                   lambda: aten_backward(bad_grad, x, y, 0, 1.0))


@covers("errors")
def test_errors():
    x, y = make((3, 4), torch.float32), make((3, 4), torch.float32)
    calls = [((x, y, 1, -0.5), {}), ((x, y, 3, 1.0), {}), ((x, make((5,), torch.float32), 1, 1.0), {}),
             ((x, y, 0, 1.0), {"out": torch.empty(3, 4, dtype=torch.int64, device=DEVICE)}),
             ((x, y, 1, 1.0), {"out": torch.empty((), dtype=torch.int32, device=DEVICE)})]
    for args, kwargs in calls:
        same_error(lambda: smooth_l1_loss_triton(*args, **kwargs), lambda: smooth_l1_loss_reference(*args, **kwargs))
    bad_grad = make((2, 4), torch.float32)
    same_error(lambda: smooth_l1_loss_backward_triton(bad_grad, x, y, 0, 1.0), lambda: aten_backward(bad_grad, x, y, 0, 1.0))
    ints = make((3, 4), torch.int64, 0, 5)  # ATen's CPU backward takes integers, its CUDA one does not
    with pytest.raises(NotImplementedError):
        smooth_l1_loss_backward_triton(ints.sum(), ints, ints, 1, 1.0)


@covers("float_dtypes", "params")
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS + [7])  # ATen's backward sums for any value but mean
@pytest.mark.parametrize("beta", [0.0, 0.5, 2.0])
def test_backward(dtype, reduction, beta):
    x, y = make((9, 33), dtype), make((9, 33), dtype)
    grad = grad_for(reduction, x.shape, dtype)
    check(smooth_l1_loss_backward_triton(grad, x, y, reduction, beta), reference_backward(grad, x, y, reduction, beta))


@covers("params", "ranks")
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_backward_matches_autograd(reduction):
    x = make((4, 5, 6), torch.float32).requires_grad_()
    y = make((5, 1), torch.float32)  # broadcast target
    loss = F.smooth_l1_loss(x, y.expand(4, 5, 6), reduction=reduction, beta=0.8)
    grad = torch.randn_like(loss)
    loss.backward(grad)
    check(smooth_l1_loss_backward_triton(grad, x.detach(), y, reduction, 0.8), x.grad)


@covers("out")
def test_backward_grad_input_and_aten_adapters():
    x, y, grad = make((5, 8), torch.float32), make((5, 8), torch.float32), make((), torch.float32)
    expected = aten_backward(grad, x, y, 1, 1.0)
    grad_input = torch.empty(8, 5, device=DEVICE).t()
    overrides = aten_overrides()
    assert overrides["aten::smooth_l1_loss_backward.grad_input"](grad, x, y, 1, 1.0, grad_input=grad_input) is grad_input
    check(grad_input, expected)
    check(overrides["aten::smooth_l1_loss_backward"](grad, x, y, 1, 1.0), expected)
    check(overrides["aten::smooth_l1_loss"](x, y, 2, 0.5), smooth_l1_loss_reference(x, y, 2, 0.5))
    out = torch.empty((), device=DEVICE)
    assert overrides["aten::smooth_l1_loss.out"](x, y, 1, 1.0, out=out) is out
    check(out, smooth_l1_loss_reference(x, y, 1, 1.0))


@covers("params")
def test_through_the_dispatcher(monkeypatch):
    """F.smooth_l1_loss and its autograd reach our kernels once flagstack.ops.enable() installs them."""
    module = sys.modules["flagstack.ops.challenge.smooth_l1_loss"]
    calls = []
    for name in ("_reduce", "launch_elementwise"):  # the mean's reduction, the backward's launch
        monkeypatch.setattr(module, name, lambda *a, fn=getattr(module, name), **k: calls.append(fn) or fn(*a, **k))
    y = make((6, 9), torch.float32)
    (expected, expected_grad), (loss, x_grad) = through_overrides(
        lambda x: F.smooth_l1_loss(x, y, beta=0.5), make((6, 9), torch.float32),
        ["aten::smooth_l1_loss", "aten::smooth_l1_loss_backward"])
    check(loss, expected)
    check(x_grad, expected_grad)
    assert len(calls) == 2
