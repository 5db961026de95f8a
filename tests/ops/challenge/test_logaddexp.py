"""logaddexp: Triton kernel against torch.logaddexp (broadcasting, promotion, out=, edge values)."""
import pytest
import torch

from flagstack.ops.challenge.logaddexp import logaddexp_triton
from tests.ops.challenge.common import (FLOAT_DTYPES, INT_DTYPES, LARGE_SHAPES, REGULAR_SHAPES, SMALL_SHAPES,
                                        check, check_binary_errors, covers, large_only_on_gpu, make, nonfinite)
from tests.ops.helpers import DEVICE


@covers("small", "regular", "ranks", "float_dtypes")
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("shape", SMALL_SHAPES + REGULAR_SHAPES + [()])
def test_shapes_dtypes(shape, dtype):
    a, b = make(shape, dtype, -20, 20), make(shape, dtype, -20, 20)
    check(logaddexp_triton(a, b), torch.logaddexp(a, b))


@covers("large")
@large_only_on_gpu
@pytest.mark.parametrize("shape", LARGE_SHAPES)
def test_large(shape):
    a, b = make(shape, torch.float32, -20, 20), make(shape, torch.float32, -20, 20)
    check(logaddexp_triton(a, b), torch.logaddexp(a, b))


@covers("broadcast", "ranks", "params")
@pytest.mark.parametrize("shapes", [((3, 1, 5), (4, 1)), ((1,), (2, 3)), ((), (4, 5)), ((6, 1), (1, 7))])
def test_broadcasting(shapes):
    a, b = make(shapes[0], torch.float32, -5, 5), make(shapes[1], torch.float32, -5, 5)
    check(logaddexp_triton(a, b), torch.logaddexp(a, b))
    check(logaddexp_triton(b, a), torch.logaddexp(b, a))


@covers("params", "float_dtypes", "int_dtypes")
@pytest.mark.parametrize("pair", [(torch.float16, torch.bfloat16), (torch.float32, torch.int64),
                                  (torch.bfloat16, torch.float32), (torch.int32, torch.float16)])
def test_type_promotion(pair):
    a, b = make((4, 9), pair[0], -5, 5), make((4, 9), pair[1], -5, 5)
    check(logaddexp_triton(a, b), torch.logaddexp(a, b))


@covers("params")
def test_zero_dim_cpu_operand():
    a, b = make((3, 4), torch.float32), torch.tensor(0.5)
    check(logaddexp_triton(a, b), torch.logaddexp(a, b.to(DEVICE)))


@covers("nonfinite")
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_nonfinite(dtype):
    a = nonfinite(dtype)
    a, b = a[:, None].expand(8, 8), a[None, :].expand(8, 8)  # every pair of special values
    check(logaddexp_triton(a, b), torch.logaddexp(a, b))
    far = torch.tensor([1e30, -1e30, 88.0, -100.0], device=DEVICE)
    check(logaddexp_triton(far, far.flip(0)), torch.logaddexp(far, far.flip(0)))


@covers("empty")
def test_empty():
    a = torch.empty(0, 3, device=DEVICE)
    assert logaddexp_triton(a, torch.ones(3, device=DEVICE)).shape == (0, 3)


@covers("noncontiguous")
def test_noncontiguous():
    a, b = make((16, 24), torch.float32), make((24, 16), torch.float32)
    check(logaddexp_triton(a, b.t()), torch.logaddexp(a, b.t()))
    check(logaddexp_triton(a.t(), b), torch.logaddexp(a.t(), b))
    check(logaddexp_triton(a[::2, ::3], b.t()[1::2, ::3]), torch.logaddexp(a[::2, ::3], b.t()[1::2, ::3]))
    c = make((16, 24), torch.float32)
    assert logaddexp_triton(a.t(), c.t()).stride() == torch.logaddexp(a.t(), c.t()).stride()  # layout kept


@covers("out")
def test_out():
    a, b = make((5, 6), torch.float16), make((6,), torch.float16)
    out = torch.empty(5, 6, dtype=torch.float32, device=DEVICE)
    assert logaddexp_triton(a, b, out=out) is out
    check(out, torch.logaddexp(a, b, out=torch.empty_like(out)))  # CUDA: not rounded to fp16 first
    wide, half = make((5, 6), torch.float32), torch.empty(5, 6, dtype=torch.float16, device=DEVICE)
    check(logaddexp_triton(wide, wide.flip(0), out=half),
          torch.logaddexp(wide, wide.flip(0), out=torch.empty_like(half)))
    strided = torch.empty(6, 5, dtype=torch.float16, device=DEVICE).t()
    check(logaddexp_triton(a, b, out=strided), torch.logaddexp(a, b))
    out = torch.empty(0, device=DEVICE, dtype=torch.float16)
    check(logaddexp_triton(a, b, out=out), torch.logaddexp(a, b))


@covers("errors", "int_dtypes")
@pytest.mark.parametrize("dtype", INT_DTYPES + [torch.bool])
def test_errors(dtype):
    check_binary_errors(logaddexp_triton, torch.logaddexp, make((3,), torch.float32), make((4,), dtype, 0, 5),
                        torch.int32)
