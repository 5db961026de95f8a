"""tril: Triton kernel against torch.tril, exact (diagonals, batch dims, dtypes, out=, in-place)."""
import pytest
import torch

from flagstack.ops.challenge.tril import tril_inplace, tril_triton
from tests.ops.challenge.common import (FLOAT_DTYPES, INT_DTYPES, check, covers, large_only_on_gpu, make, nonfinite,
                                        same_error)
from tests.ops.helpers import DEVICE, ON_GPU

DIAGONALS = [0, 3, -2, 200, -200]


@covers("small", "regular", "ranks", "params", "float_dtypes")
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("shape", [(1, 1), (5, 3), (3, 7), (40, 150), (2, 3, 17, 19)])
@pytest.mark.parametrize("diagonal", DIAGONALS)
def test_shapes_diagonals(shape, dtype, diagonal):
    x = make(shape, dtype)
    check(tril_triton(x, diagonal), torch.tril(x, diagonal), exact=True)


@covers("large")
@large_only_on_gpu
@pytest.mark.parametrize("shape", [(4096, 4096), (8, 1000, 1003)] if ON_GPU else [])
def test_large(shape):
    x = make(shape, torch.float32)
    check(tril_triton(x, 3), torch.tril(x, 3), exact=True)


@covers("int_dtypes")
@pytest.mark.parametrize("dtype", INT_DTYPES + [torch.bool])
def test_integer_and_bool(dtype):
    x = make((9, 12), dtype, 1, 100)
    check(tril_triton(x, 1), torch.tril(x, 1), exact=True)


@covers("nonfinite")
def test_nonfinite_kept_or_zeroed():
    x = nonfinite(torch.float32).repeat(8, 1)  # 8x8 with inf/nan/-0 on both sides of the diagonal
    check(tril_triton(x), torch.tril(x), exact=True)
    assert torch.equal(tril_triton(x).signbit(), torch.tril(x).signbit())


@covers("empty")
@pytest.mark.parametrize("shape", [(0, 5), (4, 0), (0, 3, 3)])
def test_empty(shape):
    x = torch.empty(shape, device=DEVICE)
    assert tril_triton(x).shape == shape and tril_inplace(x.clone()).shape == shape


@covers("noncontiguous")
def test_noncontiguous():
    x = make((3, 20, 30), torch.float32)
    for view in (x.transpose(1, 2), x[:, ::2, 1::3], x.permute(1, 0, 2), x.unsqueeze(0).expand(2, 3, 20, 30)):
        check(tril_triton(view, 1), torch.tril(view, 1), exact=True)


@covers("inplace")
def test_inplace():
    x = make((2, 13, 11), torch.float16)
    for target, diagonal in ((x.clone(), 0), (x.clone().transpose(1, 2), -1), (x.clone()[:, ::2], 2)):
        expected = torch.tril(target, diagonal)
        assert tril_inplace(target, diagonal) is target
        check(target, expected, exact=True)
    base = x.clone()
    tril_inplace(base[:, 2:9, 1:8])  # a window: only its upper part zeroed, the rest untouched
    expected = x.clone()
    expected[:, 2:9, 1:8] = torch.tril(expected[:, 2:9, 1:8])
    check(base, expected, exact=True)


@covers("out")
def test_out():
    x = make((4, 6, 5), torch.float32)
    out = torch.empty(4, 6, 5, device=DEVICE)
    assert tril_triton(x, 1, out=out) is out
    check(out, torch.tril(x, 1), exact=True)
    strided = torch.empty(5, 6, 4, device=DEVICE).permute(2, 1, 0)  # batch dim not mergeable
    check(tril_triton(x, -1, out=strided), torch.tril(x, -1), exact=True)
    with pytest.warns(UserWarning, match="resized"):
        check(tril_triton(x, out=torch.empty(3, device=DEVICE)), torch.tril(x), exact=True)


@covers("errors")
def test_errors():
    vec = make((5,), torch.float32)
    same_error(lambda: tril_triton(vec), lambda: torch.tril(vec))
    same_error(lambda: tril_inplace(vec.clone()), lambda: vec.clone().tril_())
    x = make((3, 3), torch.float32)
    bad = torch.empty(3, 3, dtype=torch.float64, device=DEVICE)
    same_error(lambda: tril_triton(x, out=bad), lambda: torch.tril(x, out=bad))
