"""upsample_nearest2d and its backward: Triton kernels against aten::upsample_nearest2d[.vec][_backward]
and autograd (output sizes, scales, dtypes, layouts, out=, grad_input=, error parity)."""
import math
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from flagstack.ops.challenge.upsample_nearest2d import (upsample_nearest2d_backward_triton, upsample_nearest2d_triton,
                                                        upsample_nearest2d_vec)
from flagstack.ops.registry import aten_overrides
from tests.ops.challenge.common import (FLOAT_DTYPES, INT_DTYPES, check, covers, large_only_on_gpu, make, nonfinite,
                                        same_error, through_overrides)
from tests.ops.helpers import DEVICE, ON_GPU

aten = torch.ops.aten
CASES = [  # input shape, output size, scales_h, scales_w
    ((1, 1, 1, 1), (3, 2), None, None), ((2, 3, 5, 7), (10, 14), None, None), ((2, 3, 5, 7), (7, 9), None, None),
    ((1, 2, 8, 9), (3, 4), None, None), ((2, 1, 4, 4), (4, 4), None, None), ((1, 2, 6, 40), (13, 100), None, None),
    ((2, 3, 5, 7), (7, 10), 1.5, 1.5), ((1, 2, 5, 6), (9, 4), 0.7, 2.0), ((1, 1, 3, 3), (6, 6), -1.0, 0.0),
    ((1, 2, 3, 5), (6, 20), None, 4.0),  # width x4: the kernel's contiguous-run path (x2 in the cases above)
    ((1, 2, 5, 3), (10, 3), 0.7, 0.4),  # scales that disagree with a doubled / unchanged size: ATen ignores them
]
VEC_FACTORS = [(2.0, 2.0), (1.5, 0.5), (3.0, 1.7), (0.34, 1.0)]


@covers("small", "regular", "params", "float_dtypes")
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("shape,size,scale_h,scale_w", CASES)
def test_forward(shape, size, scale_h, scale_w, dtype):
    x = make(shape, dtype)
    check(upsample_nearest2d_triton(x, size, scale_h, scale_w), aten.upsample_nearest2d(x, size, scale_h, scale_w),
          exact=True)


@covers("params")
@pytest.mark.parametrize("factors", VEC_FACTORS)
def test_vec_scale_factors(factors):
    x = make((2, 3, 9, 11), torch.float32)
    expected = F.interpolate(x, scale_factor=factors, mode="nearest")
    check(upsample_nearest2d_vec(x, None, factors), expected, exact=True)
    check(upsample_nearest2d_vec(x, [5, 17], None), aten.upsample_nearest2d.vec(x, [5, 17], None), exact=True)


@covers("large")
@large_only_on_gpu
@pytest.mark.parametrize("shape,size", [((16, 64, 128, 128), (256, 256)), ((2, 8, 1000, 1003), (1500, 777))]
                         if ON_GPU else [])
def test_large(shape, size):
    x = make(shape, torch.bfloat16)
    check(upsample_nearest2d_triton(x, size), aten.upsample_nearest2d(x, size), exact=True)
    grad = make((*shape[:2], *size), torch.float32)
    check(upsample_nearest2d_backward_triton(grad, size, shape), aten.upsample_nearest2d_backward(grad, size, shape))


@covers("int_dtypes", "errors")
@pytest.mark.parametrize("dtype", INT_DTYPES + [torch.bool])
def test_integer_inputs(dtype):  # ATen takes uint8 and no other integer type
    x = make((2, 2, 3, 4), dtype, 0, 100)
    if dtype == torch.uint8:
        check(upsample_nearest2d_triton(x, (7, 5)), aten.upsample_nearest2d(x, (7, 5)), exact=True)
    else:
        same_error(lambda: upsample_nearest2d_triton(x, (7, 5)), lambda: aten.upsample_nearest2d(x, (7, 5)))


@covers("nonfinite")
def test_nonfinite():
    x = nonfinite(torch.float32).view(1, 2, 2, 2)
    out, ref = upsample_nearest2d_triton(x, (5, 3)), aten.upsample_nearest2d(x, (5, 3))
    check(out, ref, exact=True)
    assert torch.equal(out.signbit(), ref.signbit())
    grad = nonfinite(torch.float32).repeat(4)[:30].view(1, 2, 5, 3)
    check(upsample_nearest2d_backward_triton(grad, (5, 3), (1, 2, 2, 2)),
          aten.upsample_nearest2d_backward(grad, (5, 3), (1, 2, 2, 2)))


@covers("empty", "errors")
def test_empty():
    x = torch.empty(0, 3, 4, 5, device=DEVICE)
    check(upsample_nearest2d_triton(x, (8, 10)), aten.upsample_nearest2d(x, (8, 10)), exact=True)
    grad = torch.empty(0, 3, 8, 10, device=DEVICE)
    check(upsample_nearest2d_backward_triton(grad, (8, 10), (0, 3, 4, 5)),
          aten.upsample_nearest2d_backward(grad, (8, 10), (0, 3, 4, 5)))
    for shape in ((2, 0, 4, 5), (2, 3, 0, 5)):
        x = torch.empty(shape, device=DEVICE)
        same_error(lambda: upsample_nearest2d_triton(x, (8, 10)), lambda: aten.upsample_nearest2d(x, (8, 10)))


@covers("noncontiguous")
def test_noncontiguous_and_layout():
    x = make((2, 6, 10, 12), torch.float16)
    for view in (x.to(memory_format=torch.channels_last), x.transpose(2, 3), x[:, ::2, 1::3], x[:1].expand(3, 6, 10, 12)):
        out, ref = upsample_nearest2d_triton(view, (15, 7)), aten.upsample_nearest2d(view, (15, 7))
        check(out, ref, exact=True)
        assert out.stride() == ref.stride()  # channels-last stays channels-last, as in ATen
        grad = make((*view.shape[:2], 15, 7), torch.float32).transpose(2, 3).contiguous().transpose(2, 3)
        check(upsample_nearest2d_backward_triton(grad, (15, 7), view.shape),
              aten.upsample_nearest2d_backward(grad, (15, 7), view.shape))


@covers("out")
def test_out():
    x = make((2, 3, 5, 7), torch.bfloat16)
    expected = aten.upsample_nearest2d(x, (8, 8))
    out = torch.empty_like(expected)
    assert upsample_nearest2d_triton(x, (8, 8), out=out) is out
    check(out, expected, exact=True)
    strided = torch.empty(2, 3, 8, 16, dtype=x.dtype, device=DEVICE)[..., ::2]
    check(upsample_nearest2d_triton(x, (8, 8), out=strided), expected, exact=True)
    vec_out = torch.empty(0, dtype=x.dtype, device=DEVICE)
    assert aten_overrides()["aten::upsample_nearest2d.vec_out"](x, None, (2.0, 1.5), out=vec_out) is vec_out
    check(vec_out, aten.upsample_nearest2d.vec(x, None, (2.0, 1.5)), exact=True)
    with pytest.warns(UserWarning, match="resized"):
        check(upsample_nearest2d_triton(x, (8, 8), out=torch.empty(3, dtype=x.dtype, device=DEVICE)), expected,
              exact=True)


@covers("errors", "ranks")  # only 4-D inputs are accepted: other ranks are error branches
def test_errors():
    x = make((2, 3, 5, 7), torch.float32)
    calls = [((make((3, 5, 7), torch.float32), (10, 14)), {}), ((x, (0, 14)), {}), ((x, (10,)), {}),
             ((x, (10, 14)), {"out": torch.empty(0, dtype=torch.float16, device=DEVICE)})]
    for args, kwargs in calls:
        same_error(lambda: upsample_nearest2d_triton(*args, **kwargs), lambda: aten.upsample_nearest2d(*args, **kwargs))
    for size, factors in (((10, 14), (2.0, 2.0)), (None, None), (None, (2.0,)), (None, (-1.0, 2.0)), (None, (0.1, 2.0))):
        same_error(lambda: upsample_nearest2d_vec(x, size, factors), lambda: aten.upsample_nearest2d.vec(x, size, factors))
    grad = make((2, 3, 10, 14), torch.float32)
    for args in ((grad, (10, 14), (2, 3, 5)), (make((2, 3, 10, 13), torch.float32), (10, 14), (2, 3, 5, 7)),
                 (make((3, 10, 14), torch.float32), (10, 14), (2, 3, 5, 7)), (grad, (10,), (2, 3, 5, 7)),
                 (grad.long(), (10, 14), (2, 3, 5, 7))):
        same_error(lambda: upsample_nearest2d_backward_triton(*args), lambda: aten.upsample_nearest2d_backward(*args))
    bad = torch.empty(0, dtype=torch.float16, device=DEVICE)
    same_error(lambda: upsample_nearest2d_backward_triton(grad, (10, 14), (2, 3, 5, 7), grad_input=bad),
               lambda: aten.upsample_nearest2d_backward.grad_input(grad, (10, 14), (2, 3, 5, 7), grad_input=bad.clone()))


@covers("params", "float_dtypes")
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("shape,size,scale_h,scale_w", CASES)
def test_backward(shape, size, scale_h, scale_w, dtype):
    grad = make((*shape[:2], *size), dtype)
    check(upsample_nearest2d_backward_triton(grad, size, shape, scale_h, scale_w),
          aten.upsample_nearest2d_backward(grad, size, shape, scale_h, scale_w))


def cuda_source_rows(in_size: int, out_size: int, scale: float | None) -> torch.Tensor:
    """ATen CUDA's forward map (UpSample.cuh): src = min(floor(dst * (1 / scale or in / out)), in - 1) in fp32;
    an unchanged size is a copy."""
    if in_size == out_size:
        return torch.arange(out_size)
    s = np.float32(1.0 / scale) if scale is not None and scale > 0 else np.float32(in_size) / np.float32(out_size)
    return torch.tensor([min(math.floor(np.float32(i) * s), in_size - 1) for i in range(out_size)])


def cuda_backward_starts(in_size: int, out_size: int, scale: float | None) -> list[int]:
    """ATen CUDA's backward map: input i takes dst [start[i], start[i + 1]), start[i] = min(ceil(i * f), out)
    with f = scale (or out / in) in fp32."""
    f = np.float32(scale) if scale is not None and scale > 0 else np.float32(out_size) / np.float32(in_size)
    return [min(math.ceil(np.float32(i) * f), out_size) for i in range(in_size + 1)]


def aten_cuda_semantics(x, grad, size, scale_h, scale_w):
    """ATen's CUDA upsample_nearest2d and its backward written out from UpSampleNearest2d.cu (its backward is
    not the forward's adjoint where a scale disagrees with the sizes); equal sizes are a copy."""
    rows, cols = cuda_source_rows(x.shape[2], size[0], scale_h), cuda_source_rows(x.shape[3], size[1], scale_w)
    out = x[:, :, rows.to(x.device)][..., cols.to(x.device)]
    if tuple(size) == tuple(x.shape[2:]):
        return out, grad.clone()
    rows, cols = cuda_backward_starts(x.shape[2], size[0], scale_h), cuda_backward_starts(x.shape[3], size[1], scale_w)
    grad_input = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    for i in range(x.shape[2]):
        for j in range(x.shape[3]):
            grad_input[:, :, i, j] = grad[:, :, rows[i]:rows[i + 1], cols[j]:cols[j + 1]].float().sum((2, 3))
    return out, grad_input.to(grad.dtype)


@covers("params")
@pytest.mark.parametrize("cuda_map", [False, True])
@pytest.mark.parametrize("shape,size,scale_h,scale_w", CASES[6:] + [((1, 2, 4, 6), (4, 6), 0.5, 3.0)])
def test_device_index_maps(shape, size, scale_h, scale_w, cuda_map, monkeypatch):
    """Both devices' index maps on any device: ATen's CUDA one (written out here) and its CPU one (ATen on
    the CPU). They differ where a given scale disagrees with the sizes (H100 run: 4 of 60 wrong)."""
    module = sys.modules["flagstack.ops.challenge.upsample_nearest2d"]
    monkeypatch.setattr(module, "follows_cuda", lambda device: cuda_map)
    x, grad = make(shape, torch.float32), make((*shape[:2], *size), torch.float32)
    if cuda_map:
        out, grad_input = aten_cuda_semantics(x, grad, size, scale_h, scale_w)
    else:
        x_cpu, grad_cpu = x.cpu(), grad.cpu()
        out = aten.upsample_nearest2d(x_cpu, size, scale_h, scale_w).to(DEVICE)
        grad_input = aten.upsample_nearest2d_backward(grad_cpu, size, shape, scale_h, scale_w).to(DEVICE)
    check(upsample_nearest2d_triton(x, size, scale_h, scale_w), out, exact=True)
    check(upsample_nearest2d_backward_triton(grad, size, shape, scale_h, scale_w), grad_input)


@covers("params", "out")
@pytest.mark.parametrize("factors", VEC_FACTORS)
def test_backward_matches_autograd(factors):
    x = make((2, 3, 9, 11), torch.float32).requires_grad_()
    y = F.interpolate(x, scale_factor=factors, mode="nearest")
    grad = torch.randn_like(y)
    y.backward(grad)
    grad_input = torch.empty(0, device=DEVICE)
    out = upsample_nearest2d_backward_triton(grad, y.shape[2:], x.shape, *factors, grad_input=grad_input)
    assert out is grad_input
    check(grad_input, x.grad)


@covers("params")
def test_through_the_dispatcher(monkeypatch):
    """F.interpolate forward and backward reach our kernels once flagstack.ops.enable() installs them."""
    module = sys.modules["flagstack.ops.challenge.upsample_nearest2d"]
    calls = []
    real = module.follows_cuda
    monkeypatch.setattr(module, "follows_cuda", lambda device: calls.append(device) or real(device))
    (expected, expected_grad), (y, x_grad) = through_overrides(
        lambda x: F.interpolate(x, scale_factor=(1.5, 2.0), mode="nearest"), make((2, 3, 5, 7), torch.float32),
        ["aten::upsample_nearest2d", "aten::upsample_nearest2d_backward"])
    check(y, expected, exact=True)
    check(x_grad, expected_grad)
    assert len(calls) == 2  # the forward and the backward
