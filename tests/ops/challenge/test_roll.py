"""roll: Triton kernel against torch.roll, exact (shifts, dims, flattening, dtypes, out=)."""
import pytest
import torch

from flagstack.ops.challenge.roll import roll_reference, roll_triton
from tests.ops.challenge.common import (FLOAT_DTYPES, INT_DTYPES, check, covers, large_only_on_gpu, make, nonfinite,
                                        same_error)
from tests.ops.helpers import DEVICE, ON_GPU

CASES = [  # shape, shifts, dims
    ((7,), 3, 0), ((7,), -9, ()), ((4, 6), (1, -2), (0, 1)), ((4, 6), 5, ()), ((40, 150), (17, -5), (0, 1)),
    ((3, 4, 5), 2, 1), ((3, 4, 5), (1, 1), (2, 2)), ((3, 4, 5), (-1, 2), (0, -1)), ((2, 3, 4, 5), 1, 0),
    ((2, 3, 4, 5, 2), (1, 2, 3, 4, 1), (0, 1, 2, 3, 4)), ((5, 1, 3), (4, 7), (1, 0)), ((6, 8), 0, 1),
]


@covers("small", "regular", "ranks", "params", "float_dtypes")
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("shape,shifts,dims", CASES)
def test_cases(shape, shifts, dims, dtype):
    x = make(shape, dtype)
    check(roll_triton(x, shifts, dims), torch.roll(x, shifts, dims), exact=True)


@covers("large")
@large_only_on_gpu
@pytest.mark.parametrize("shape", [(4096, 4096), (8, 1000, 1003)] if ON_GPU else [])
def test_large(shape):
    x = make(shape, torch.float32)
    check(roll_triton(x, (17, -5), (0, 1)), torch.roll(x, (17, -5), (0, 1)), exact=True)
    check(roll_triton(x, 12345), torch.roll(x, 12345), exact=True)


@covers("int_dtypes")
@pytest.mark.parametrize("dtype", INT_DTYPES + [torch.bool])
def test_integer_and_bool(dtype):
    x = make((9, 12), dtype, 0, 100)
    check(roll_triton(x, (2, -3), (0, 1)), torch.roll(x, (2, -3), (0, 1)), exact=True)


@covers("nonfinite", "ranks")
def test_nonfinite_and_scalar():
    x = nonfinite(torch.float32)
    out = roll_triton(x, 3)
    check(out, torch.roll(x, 3), exact=True)
    assert torch.equal(out.signbit(), torch.roll(x, 3).signbit())
    scalar = torch.tensor(2.5, device=DEVICE)
    check(roll_triton(scalar, 1), torch.roll(scalar, 1), exact=True)
    same_error(lambda: roll_triton(scalar, 1, 0), lambda: torch.roll(scalar, 1, 0))


@covers("empty")
def test_empty():
    x = torch.empty(0, 3, device=DEVICE)
    check(roll_triton(x, 2, 1), torch.roll(x, 2, 1), exact=True)
    check(roll_triton(x, 1), torch.roll(x, 1), exact=True)


@covers("noncontiguous")
def test_noncontiguous():
    x = make((6, 10, 8), torch.float32)
    for view in (x.transpose(0, 2), x[:, ::3, 1::2], x.unsqueeze(1).expand(6, 2, 10, 8)):
        check(roll_triton(view, (1, -3), (0, 2)), torch.roll(view, (1, -3), (0, 2)), exact=True)


@covers("out")
def test_out():
    x = make((5, 7), torch.float16)
    out = torch.empty(5, 7, dtype=torch.float16, device=DEVICE)
    assert roll_triton(x, (2, 3), (0, 1), out=out) is out
    check(out, torch.roll(x, (2, 3), (0, 1)), exact=True)
    strided = torch.empty(7, 5, dtype=torch.float16, device=DEVICE).t()
    check(roll_triton(x, -4, 1, out=strided), torch.roll(x, -4, 1), exact=True)
    same = x.clone()
    check(roll_triton(same, 2, 1, out=same), torch.roll(x, 2, 1), exact=True)  # out is the input itself
    with pytest.warns(UserWarning, match="resized"):
        check(roll_triton(x, 1, out=torch.empty(2, dtype=torch.float16, device=DEVICE)), torch.roll(x, 1),
              exact=True)


@covers("errors")
@pytest.mark.parametrize("shifts,dims", [((1, 2), (0,)), ((1, 2), ()), ((), ()), (1, 2), (1, -3)])
def test_errors(shifts, dims):
    x = make((3, 4), torch.float32)
    same_error(lambda: roll_triton(x, shifts, dims), lambda: torch.roll(x, shifts, dims))


@covers("errors")
def test_out_dtype_error():
    x = make((3, 4), torch.float32)
    bad = torch.empty(3, 4, dtype=torch.int64, device=DEVICE)
    same_error(lambda: roll_triton(x, 1, 0, out=bad), lambda: roll_reference(x, 1, 0, out=bad))
