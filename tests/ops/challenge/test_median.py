"""median: Triton radix select against torch.median, global and along a dim (values exact; indices
exact where the median value is unique, else checked to point at the median), NaN rows, out= forms."""
import sys

import pytest
import torch

from flagstack.ops.challenge.median import median_dim_triton, median_triton
from flagstack.ops.registry import aten_overrides
from tests.ops.challenge.common import FLOAT_DTYPES, INT_DTYPES, check, covers, large_only_on_gpu, make, nonfinite, same_error
from tests.ops.helpers import DEVICE, ON_GPU

median_module = sys.modules["flagstack.ops.challenge.median"]
DIM_CASES = [((7,), 0), ((3, 5), 1), ((3, 5), 0), ((64, 129), -1), ((2, 3, 4, 33), 2), ((2, 3, 4, 33), -1), ((1, 1), 1)]


def distinct(shape, dtype):
    """Values without ties (so torch's index is the only right one): a random permutation of n
    representable values, with random signs."""
    n = torch.Size(shape).numel()
    perm = torch.randperm(n, device=DEVICE)
    if dtype in (torch.float16, torch.bfloat16):  # consecutive positive bit patterns, exact in both
        magnitudes = (perm + 0x3000).to(torch.int16).view(dtype)
        return (magnitudes * (torch.randint(0, 2, (n,), device=DEVICE) * 2 - 1).to(dtype)).view(shape)
    return (perm - n // 2).to(dtype).view(shape)


def check_dim(x, dim, keepdim=False, unique=True):
    values, indices = median_dim_triton(x, dim, keepdim)
    ref_values, ref_indices = torch.median(x, dim, keepdim)
    check(values, ref_values, exact=True)
    if unique:
        check(indices, ref_indices, exact=True)
    else:  # ties: torch picks any of them (and differs between CPU and CUDA)
        assert indices.dtype == torch.int64 and indices.shape == ref_indices.shape
        gathered = x.gather(dim, indices if keepdim or x.dim() == 0 else indices.unsqueeze(dim))
        check(gathered if keepdim or x.dim() == 0 else gathered.squeeze(dim), ref_values, exact=True)


@covers("small", "regular", "ranks", "params", "float_dtypes")
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("shape,dim", DIM_CASES)
@pytest.mark.parametrize("keepdim", [False, True])
def test_dim(shape, dim, keepdim, dtype):
    check_dim(distinct(shape, dtype), dim, keepdim)


@covers("small", "regular", "ranks", "float_dtypes")
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("shape", [(1,), (7,), (3, 5), (64, 129), (2, 3, 4, 33), ()])
def test_global(shape, dtype):
    x = make(shape, dtype)
    check(median_triton(x), torch.median(x), exact=True)


@covers("int_dtypes", "errors")
@pytest.mark.parametrize("dtype", INT_DTYPES + [torch.bool])
def test_integers(dtype):
    x = make((6, 40), dtype, -100, 100) if dtype != torch.bool else make((6, 40), dtype)
    if dtype == torch.bool:  # ATen's CUDA global median sorts and takes bool; CPU's and every median.dim raise
        if x.is_cuda:
            check(median_triton(x), torch.median(x), exact=True)
            check(median_triton(x[:, :7]), torch.median(x[:, :7]), exact=True)
        else:
            same_error(lambda: median_triton(x), lambda: torch.median(x))
        same_error(lambda: median_dim_triton(x, 1), lambda: torch.median(x, 1))
        return
    check(median_triton(x), torch.median(x), exact=True)
    check_dim(x, 1, unique=False)
    check_dim(distinct((5, 21), dtype), 1)


@covers("params")
@pytest.mark.parametrize("dtype", [torch.float32, torch.int64, torch.float16])
def test_ties(dtype):
    x = make((9, 50), dtype, 0, 4)
    check_dim(x, 1, unique=False)
    check_dim(x, 0, keepdim=True, unique=False)


@covers("regular", "params")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_long_rows_and_many_chunks(monkeypatch, dtype):
    # rows longer than MAX_TILE are re-read per pass; the global passes spread chunks over programs
    monkeypatch.setattr(median_module, "MAX_TILE", 64)
    monkeypatch.setattr(median_module, "BLOCK", 64)
    x = distinct((2, 150), dtype)
    x[1, 17] = float("nan")
    check_dim(x, 1)
    check(median_triton(x[0]), torch.median(x[0]), exact=True)
    check(median_triton(x), torch.median(x), exact=True)


@covers("large")
@large_only_on_gpu
@pytest.mark.parametrize("shape,dim", [((1024, 4096), -1), ((8, 20000), 1), ((300, 77, 5), 1)] if ON_GPU else [])
def test_large(shape, dim):
    x = distinct(shape, torch.float32)
    check_dim(x, dim)
    check(median_triton(x), torch.median(x), exact=True)
    big = make((4096, 4096), torch.bfloat16)
    check(median_triton(big), torch.median(big), exact=True)


@covers("nonfinite")
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_nonfinite(dtype):
    special = nonfinite(dtype)  # inf, -inf, nan, -0, 0, 1, -2.5, 0.5
    rows = torch.stack([special, special[[0, 1, 3, 4, 5, 6, 7, 7]], special.flip(0), special[[1, 0, 5, 6, 3, 3, 3, 0]]])
    check_dim(rows, 1, unique=False)  # row 0 and 2: NaN at the first NaN; row 3: ties of -0
    check(median_triton(rows), torch.median(rows), exact=True)
    finite = rows[1]
    check(median_triton(finite), torch.median(finite), exact=True)
    two_nans = torch.tensor([1.0, float("nan"), 2.0, float("nan")], dtype=dtype, device=DEVICE)
    check_dim(two_nans, 0)  # index of the first NaN, as torch


@covers("empty", "errors")
def test_empty():
    check(median_triton(torch.empty(0, device=DEVICE)), torch.median(torch.empty(0, device=DEVICE)), exact=True)
    x = torch.empty(0, 3, device=DEVICE)
    check_dim(x, 1)
    check_dim(x, 1, keepdim=True)
    same_error(lambda: median_dim_triton(x, 0), lambda: torch.median(x, 0))


@covers("ranks")
def test_zero_dim():
    x = torch.tensor(2.5, device=DEVICE)
    check(median_triton(x), torch.median(x), exact=True)
    for dim in (0, -1):
        check_dim(x, dim)
        check_dim(x, dim, keepdim=True)
    same_error(lambda: median_dim_triton(x, 1), lambda: torch.median(x, 1))


@covers("noncontiguous")
def test_noncontiguous():
    x = distinct((12, 10, 14), torch.float32)
    for view, dim in ((x.transpose(0, 2), 0), (x.transpose(0, 2), 2), (x[:, ::2, 1::3], 1), (x.permute(1, 2, 0), -1),
                      (x[0].unsqueeze(0).expand(3, 10, 14), 2)):
        check_dim(view, dim, unique=view.stride(0) != 0)
        check(median_triton(view), torch.median(view), exact=True)


@covers("out")
def test_out():
    x = distinct((5, 9), torch.float32)
    out = torch.empty((), device=DEVICE)
    assert median_triton(x, out=out) is out
    check(out, torch.median(x), exact=True)
    values, indices = torch.empty(5, device=DEVICE), torch.empty(5, dtype=torch.int64, device=DEVICE)
    result = aten_overrides()["aten::median.dim_values"](x, 1, False, values=values, indices=indices)
    assert result[0] is values and result[1] is indices
    ref = torch.median(x, 1)
    check(values, ref.values, exact=True)
    check(indices, ref.indices, exact=True)
    strided_values = torch.empty(5, 2, device=DEVICE)[:, 0]
    median_dim_triton(x, 1, values=strided_values, indices=indices)
    check(strided_values, ref.values, exact=True)
    with pytest.warns(UserWarning, match="resized"):
        median_dim_triton(x, 0, True, values=torch.empty(2, device=DEVICE), indices=indices)
    check(indices, torch.median(x, 0, True).indices, exact=True)


@covers("errors")
def test_errors():
    x = make((3, 4), torch.float32)
    same_error(lambda: median_dim_triton(x, 2), lambda: torch.median(x, 2))
    same_error(lambda: median_dim_triton(x, -3), lambda: torch.median(x, -3))
    half = torch.empty(0, dtype=torch.float16, device=DEVICE)
    longs, ints = torch.empty(0, dtype=torch.int64, device=DEVICE), torch.empty(0, dtype=torch.int32, device=DEVICE)
    aten = torch.ops.aten
    same_error(lambda: median_triton(x, out=half), lambda: aten.median.out(x, out=half.clone()))
    same_error(lambda: median_dim_triton(x, 1, values=half, indices=longs),
               lambda: aten.median.dim_values(x, 1, False, values=half.clone(), indices=longs.clone()))
    same_error(lambda: median_dim_triton(x, 1, values=torch.empty(0, device=DEVICE), indices=ints),
               lambda: aten.median.dim_values(x, 1, False, values=torch.empty(0, device=DEVICE), indices=ints.clone()))
