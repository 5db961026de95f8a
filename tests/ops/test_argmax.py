"""argmax: exact against torch.argmax (first index on ties, first NaN wins), every split count."""
import pytest
import torch

from flagstack.ops import argmax, use_backend
from flagstack.ops.argmax import argmax_rows, argmax_triton
from tests.ops.helpers import DEVICE, DTYPES, ON_GPU


def _hard_rows(rows: int, cols: int, dtype: torch.dtype) -> torch.Tensor:
    """Many ties (small integers), a NaN row, two NaNs in one row, an all -inf row, a late max."""
    x = torch.randint(-3, 3, (rows, cols), device=DEVICE).to(dtype)
    x[0, cols // 2] = float("nan")
    x[1, cols - 1] = x[1, cols - 3] = float("nan")
    x[2] = float("-inf")
    x[3, cols - 1] = 100
    return x


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cols", [3, 200])
@pytest.mark.parametrize("splits", [None, 1, 3])
def test_hard_rows_every_split(cols, dtype, splits):
    x = _hard_rows(5, cols, dtype)
    assert torch.equal(argmax_rows(x, splits=splits, block=64), torch.argmax(x, -1))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows", [1, 256, 4096] if ON_GPU else [2, 6])
def test_vocab_rows(rows, dtype):
    cols = 151936 if ON_GPU else 9000
    x = torch.randn(rows, cols, dtype=dtype, device=DEVICE)
    assert torch.equal(argmax_triton(x, -1), torch.argmax(x, -1))


def test_dims_keepdim_and_layouts():
    x = torch.randint(0, 4, (2, 3, 5), device=DEVICE).float()
    for dim, keepdim in [(None, False), (None, True), (0, False), (1, True), (-1, False)]:
        out, expected = argmax_triton(x, dim, keepdim), torch.argmax(x, dim, keepdim)
        assert out.shape == expected.shape and torch.equal(out, expected), (dim, keepdim)
    strided = x[:, ::2, 1:]
    assert torch.equal(argmax_triton(strided, 1), torch.argmax(strided, 1))
    assert torch.equal(argmax_triton(x.transpose(0, 2), -1), torch.argmax(x.transpose(0, 2), -1))
    scalar = torch.tensor(3.0, device=DEVICE)
    assert argmax_triton(scalar).item() == 0 and argmax_triton(scalar, 0, True).shape == ()
    assert argmax_triton(torch.empty(0, 4, device=DEVICE), -1).shape == (0,)


def test_dispatch_and_errors():
    x = torch.randn(3, 7)
    with use_backend("reference"):
        assert torch.equal(argmax(x, 1), torch.argmax(x, 1))
    with pytest.raises(ValueError, match="x must have dtype"):
        argmax(x.long())
    with pytest.raises(ValueError, match="dim must be"):
        argmax(x, 2)
    with pytest.raises(ValueError, match="non-empty dim"):
        argmax(torch.empty(3, 0), 1)
    with pytest.raises(ValueError, match="must not be empty"):
        argmax(torch.empty(0, 3))
    with pytest.raises(ValueError, match="at least one column"):
        argmax_rows(torch.empty(2, 0))
