"""conv_transpose2d: Triton kernel against F.conv_transpose2d computed in fp64 (stride, padding,
output_padding, dilation, groups, bias; 3-D and 4-D inputs; dtypes, inf/nan, layouts, out=, error parity,
F.conv_transpose2d and its autograd through the aten::convolution override)."""
import sys

import pytest
import torch
import torch.nn.functional as F

from flagstack.ops.aten import use_aten
from flagstack.ops.challenge.conv_transpose2d import conv_transpose2d_reference, conv_transpose2d_triton
from flagstack.ops.registry import aten_overrides
from tests.ops.challenge.common import (FLOAT_DTYPES, INT_DTYPES, check, covers, large_only_on_gpu, make, same_error,
                                        through_overrides)
from tests.ops.helpers import DEVICE, ON_GPU

conv_module = sys.modules["flagstack.ops.challenge.conv_transpose2d"]
# (input shape, weight shape, stride, padding, output_padding, groups, dilation, bias)
CASES = [((2, 4, 5, 6), (4, 3, 3, 3), 2, 1, 1, 1, 1, True),  # the core shape's parameters, output_padding
         ((1, 4, 4, 5), (4, 2, 2, 3), (1, 2), (0, 1), (0, 1), 2, 1, True),  # per-dim values, 2 groups
         ((4, 3, 3), (4, 3, 3, 3), 1, 0, 0, 1, 1, False),  # batch-less input, no bias
         ((2, 6, 4, 4), (6, 1, 3, 3), 3, 2, 2, 3, (2, 1), True),  # stride 3, dilation, one channel per group
         ((1, 2, 4, 4), (2, 3, 3, 3), 1, 1, 1, 1, 2, True),  # output_padding allowed by dilation, not stride
         ((1, 1, 1, 1), (1, 1, 1, 1), [1], [0], [0], 1, [1], False)]  # one pixel; one-element lists


def expected(x, weight, bias=None, *params):
    """F.conv_transpose2d in fp64 (exact for these sizes), rounded to x's dtype: torch's own fp32 conv
    may use TF32 on a GPU, and ours accumulates in fp32."""
    wide = [t.double() if t is not None else None for t in (x, weight, bias)]
    return conv_transpose2d_reference(*wide, *params).to(x.dtype)


def inputs(x_shape, w_shape, groups, with_bias, dtype):
    weight = make(w_shape, dtype)
    return make(x_shape, dtype), weight, make((w_shape[1] * groups,), dtype) if with_bias else None


@covers("small", "ranks", "params", "float_dtypes")
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)  # bf16: the kernel upcasts its dot operands on CPU only
@pytest.mark.parametrize("case", CASES)
def test_cases(case, dtype):
    x_shape, w_shape, stride, padding, output_padding, groups, dilation, with_bias = case
    x, weight, bias = inputs(x_shape, w_shape, groups, with_bias, dtype)
    params = (stride, padding, output_padding, groups, dilation)
    check(conv_transpose2d_triton(x, weight, bias, *params), expected(x, weight, bias, *params))


@covers("regular", "params")
def test_regular_channels_tile_tails():
    # More channels than one K and one N tile on the interpreter (64): the K loop runs twice, N tiles have tails.
    x, weight, bias = inputs((1, 80, 3, 4), (80, 70, 2, 2), 1, True, torch.float32)
    check(conv_transpose2d_triton(x, weight, bias, 2, 0, 1), expected(x, weight, bias, 2, 0, 1))


@covers("large")
@large_only_on_gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_large(dtype):
    x, weight, _ = inputs((16, 64, 64, 64), (64, 32, 3, 3), 1, False, dtype)
    check(conv_transpose2d_triton(x, weight, None, 2), expected(x, weight, None, 2))
    x, weight, bias = inputs((4, 96, 33, 47), (96, 40, 4, 5), 2, True, dtype)
    params = ((2, 3), (1, 2), (1, 0), 2, (1, 2))
    check(conv_transpose2d_triton(x, weight, bias, *params), expected(x, weight, bias, *params))


@covers("int_dtypes", "errors")
@pytest.mark.parametrize("dtype", INT_DTYPES + [torch.bool, torch.float64])
def test_other_dtypes(dtype):
    """fp16 / bf16 / fp32 only (ATen on CUDA has fp64 too, its CPU kernel also int64): the ATen adapter
    hands the others back to ATen."""
    x, weight = make((1, 2, 3, 3), dtype, 0, 4), make((2, 2, 2, 2), dtype, 0, 4)
    if ON_GPU and not dtype.is_floating_point:
        same_error(lambda: conv_transpose2d_triton(x, weight), lambda: conv_transpose2d_reference(x, weight))
    with pytest.raises(NotImplementedError):
        conv_transpose2d_triton(x, weight)
    assert aten_overrides()["aten::convolution"](x, weight, None, [1], [0], [1], True, [0], 1) is NotImplemented


@covers("nonfinite")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_nonfinite_inputs(dtype):
    # Non-finite values in the input only: with an inf weight, a tap that misses a pixel adds 0 * inf = nan
    # in every implicit-GEMM form (ours, cuDNN's), but not in ATen's CPU scatter form.
    x, weight, bias = inputs((1, 3, 4, 4), (3, 2, 3, 3), 1, True, dtype)
    x[0, 0, 1, 1], x[0, 1, 2, 3], x[0, 2, 0, 0], x[0, 0, 3, :] = float("nan"), float("inf"), float("-inf"), -0.0
    check(conv_transpose2d_triton(x, weight, bias, 2, 1), expected(x, weight, bias, 2, 1))
    zeros = torch.zeros(1, 3, 2, 2, dtype=dtype, device=DEVICE).neg()  # -0 everywhere, no bias: -0 * w sums to 0
    out = conv_transpose2d_triton(zeros, weight)
    check(out, expected(zeros, weight))


@covers("empty", "errors")
def test_empty():
    weight = make((3, 2, 3, 3), torch.float32)
    assert conv_transpose2d_triton(torch.empty(0, 3, 4, 5, device=DEVICE), weight, None, 2).shape == (0, 2, 9, 11)
    no_rows = torch.empty(2, 3, 0, 5, device=DEVICE)
    same_error(lambda: conv_transpose2d_triton(no_rows, weight), lambda: conv_transpose2d_reference(no_rows, weight))


def test_weight_relayout_follows_changes():
    # The kernel's copy of the weight is kept per weight: an in-place change, swapped storage and an
    # inference tensor (no version to tell a change by) must each still give the current weight's result.
    x, weight, bias = inputs((2, 4, 3, 3), (4, 3, 2, 2), 1, True, torch.float32)
    check(conv_transpose2d_triton(x, weight, bias, 2), expected(x, weight, bias, 2))
    weight.mul_(-2.0)
    check(conv_transpose2d_triton(x, weight, bias, 2), expected(x, weight, bias, 2))
    weight.data = make((4, 3, 2, 2), torch.float32)
    check(conv_transpose2d_triton(x, weight, bias, 2), expected(x, weight, bias, 2))
    with torch.inference_mode():
        frozen = make((4, 3, 2, 2), torch.float32)
        check(conv_transpose2d_triton(x, frozen, bias, 2), expected(x, frozen, bias, 2))
        frozen.add_(1.0)
        check(conv_transpose2d_triton(x, frozen, bias, 2), expected(x, frozen, bias, 2))


def test_repeated_calls_keep_alignment_and_out_strides_apart():
    # The wrapper reuses its checks and compiled kernel per call key (launch_cache.py). Calls that share
    # shapes but differ in what Triton specializes on (a 2-byte-aligned input, the strides of out=) must
    # each still compute their own result.
    x, weight, bias = inputs((2, 4, 5, 6), (4, 3, 3, 3), 1, True, torch.float16)
    storage = make((1 + x.numel(),), torch.float16)
    shifted = storage[1:].view(x.shape)  # same shape and strides, data 2 bytes past an aligned address
    for inp in (x, shifted, x, shifted):
        check(conv_transpose2d_triton(inp, weight, bias, 2, 1, 1), expected(inp, weight, bias, 2, 1, 1))
    want = expected(x, weight, bias, 2, 1, 1)
    for out in (torch.empty_like(want), torch.empty_like(want, memory_format=torch.channels_last),
                torch.empty_like(want)):
        conv_transpose2d_triton(x, weight, bias, 2, 1, 1, out=out)
        check(out, want)


@covers("noncontiguous")
def test_layouts():
    base, weight, bias = inputs((2, 4, 6, 5), (4, 3, 3, 2), 1, True, torch.float32)
    odd_weight = make((3, 4, 2, 3), torch.float32).permute(1, 0, 3, 2)  # weight with permuted strides
    for x, w in ((base.to(memory_format=torch.channels_last), weight), (base.transpose(2, 3), weight),
                 (base[:, :, ::2, 1:], weight), (base[:1].expand(3, 4, 6, 5), weight), (base, odd_weight)):
        check(conv_transpose2d_triton(x, w, bias, 2, 1, 1), expected(x, w, bias, 2, 1, 1))
    channels_last = conv_transpose2d_triton(base.to(memory_format=torch.channels_last), weight)
    assert channels_last.is_contiguous(memory_format=torch.channels_last)  # as ATen: the input's format


@covers("out")
def test_out_and_aten_adapters():
    x, weight, bias = inputs((2, 4, 3, 5), (4, 3, 2, 2), 2, True, torch.float16)
    params = (2, 0, 1, 2, 1)
    ref = expected(x, weight, bias, *params)
    out = torch.empty(0, dtype=x.dtype, device=DEVICE)
    assert conv_transpose2d_triton(x, weight, bias, *params, out=out) is out
    check(out, ref)
    strided = torch.empty(ref.shape[::-1], dtype=x.dtype, device=DEVICE).permute(3, 2, 1, 0)
    check(conv_transpose2d_triton(x, weight, bias, *params, out=strided), ref)
    with pytest.warns(UserWarning, match="resized"):
        check(conv_transpose2d_triton(x, weight, bias, *params, out=torch.empty(3, dtype=x.dtype, device=DEVICE)), ref)
    unbatched = torch.empty(0, dtype=x.dtype, device=DEVICE)
    check(conv_transpose2d_triton(x[1], weight, bias, *params, out=unbatched), ref[1])
    # aten::convolution's argument order: stride, padding, dilation, transposed, output_padding, groups
    overrides = aten_overrides()
    check(overrides["aten::convolution"](x, weight, bias, [2], [0], [1], True, [1], 2), ref)
    out = torch.empty_like(ref)
    assert overrides["aten::convolution.out"](x, weight, bias, [2], [0], [1], True, [1], 2, out=out) is out
    check(out, ref)
    assert overrides["aten::convolution"](x, weight[:, :2], None, [1], [0], [1], False, [0], 1) is NotImplemented


@covers("errors", "out")
def test_errors():
    x, weight, bias = inputs((2, 4, 5, 6), (4, 3, 3, 3), 1, True, torch.float32)
    bad = [((x[0, 0], weight), {}), ((x[None], weight), {}), ((x, weight[0]), {}), ((x, weight, None, (1, 2, 3)), {}),
           ((x, weight), {"groups": 0}), ((x, weight), {"groups": 3}), ((x[:, :3], weight), {}),
           ((x, weight, make((5,), torch.float32)), {}), ((x, weight, bias[:, None]), {}),
           ((x, weight), {"stride": 0}), ((x, weight), {"padding": -1}), ((x, weight), {"output_padding": -1}),
           ((x, weight), {"output_padding": 1}), ((x, weight), {"stride": 2, "output_padding": 2}),
           ((x, weight), {"padding": 5}), ((x.half(), weight), {}), ((x, weight, bias.double()), {})]
    for args, kwargs in bad:
        same_error(lambda: conv_transpose2d_triton(*args, **kwargs),
                   lambda: conv_transpose2d_reference(*args, **kwargs))
    with pytest.raises(RuntimeError):  # ATen's CPU kernel (oneDNN) raises its own error for dilation 0
        conv_transpose2d_triton(x, weight, dilation=0)
    wrong_out = torch.empty(0, dtype=torch.float64, device=DEVICE)
    same_error(lambda: conv_transpose2d_triton(x, weight, out=wrong_out),
               lambda: torch.ops.aten.convolution.out(x, weight, None, [1], [0], [1], True, [0], 1, out=wrong_out))


@covers("params")
def test_through_the_dispatcher(monkeypatch):
    """F.conv_transpose2d (3-D and 4-D) reaches our kernel under flagstack.ops.enable(), autograd still works
    (ATen's convolution_backward), and a plain F.conv2d falls back to ATen."""
    calls = []
    kernel = conv_module.conv_transpose2d_triton
    monkeypatch.setattr(conv_module, "conv_transpose2d_triton", lambda *a, **k: calls.append(1) or kernel(*a, **k))
    x, weight, bias = inputs((2, 4, 5, 6), (4, 3, 3, 3), 2, True, torch.float32)
    (want, want_grad), (got, got_grad) = through_overrides(
        lambda x: F.conv_transpose2d(x, weight, bias, 2, 1, 1, 2), x, ["aten::convolution"])
    check(got, want)
    check(got_grad, want_grad)
    plain_weight = weight.transpose(0, 1).reshape(6, 2, 3, 3)
    plain = F.conv2d(x, plain_weight, groups=2)
    with use_aten(DEVICE.upper(), only=["aten::convolution"]):
        check(F.conv_transpose2d(x[0], weight, bias, 2, 1, 1, 2), want[0])
        check(F.conv2d(x, plain_weight, groups=2), plain)
    assert len(calls) == 2  # the two transposed calls, not the plain convolution
