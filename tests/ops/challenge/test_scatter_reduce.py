"""scatter_reduce: Triton kernels against torch.scatter_reduce (every reduction, include_self both ways,
any dim, dtypes, NaN/inf, layouts, out= and in-place ATen forms, error parity)."""
import sys

import pytest
import torch

from flagstack.ops.challenge.scatter_reduce import (scatter_reduce_inplace_triton, scatter_reduce_reference,
                                                    scatter_reduce_triton)
from flagstack.ops.registry import aten_overrides
from tests.ops.challenge.common import FLOAT_DTYPES, INT_DTYPES, check, covers, large_only_on_gpu, make, same_error
from tests.ops.helpers import DEVICE, ON_GPU

scatter_module = sys.modules["flagstack.ops.challenge.scatter_reduce"]
REDUCES = ["sum", "prod", "mean", "amax", "amin"]
# (self shape, dim, index shape, src shape): index no larger than src, nor than self off `dim`.
CASES = [((5,), 0, (9,), (9,)), ((3, 4), 1, (3, 6), (3, 7)), ((6, 3), 0, (10, 2), (11, 3)),
         ((2, 5, 33), -1, (2, 4, 70), (2, 5, 70)), ((4, 3, 2, 5), 1, (3, 8, 2, 4), (4, 9, 2, 5))]


def inputs(self_shape, dim, index_shape, src_shape, dtype, reduce="sum"):
    """self, index, src; prod keeps values near 1 so products stay finite and well scaled."""
    low, high = (0.5, 1.5) if reduce == "prod" and dtype.is_floating_point else (-3, 3)
    x, src = make(self_shape, dtype, low, high), make(src_shape, dtype, low, high)
    index = torch.randint(0, self_shape[dim], index_shape, device=DEVICE)
    return x, index, src


def reference(x, dim, index, src, reduce, include_self=True):
    """torch's result computed from fp32 copies of fp16/bf16 inputs (we accumulate in fp32, round once)."""
    if x.dtype in (torch.float16, torch.bfloat16):
        return scatter_reduce_reference(x.float(), dim, index, src.float(), reduce,
                                        include_self=include_self).to(x.dtype)
    return scatter_reduce_reference(x, dim, index, src, reduce, include_self=include_self)


@covers("small", "regular", "ranks", "params", "float_dtypes")
@pytest.mark.parametrize("dtype,case", [(torch.float32, case) for case in CASES] +
                         [(dtype, CASES[i]) for dtype in FLOAT_DTYPES[1:] for i in (1, 3)])
@pytest.mark.parametrize("include_self", [True, False])
@pytest.mark.parametrize("reduce", REDUCES)
def test_reductions(reduce, include_self, dtype, case):
    x, index, src = inputs(*case, dtype, reduce)
    dim = case[1]
    out = scatter_reduce_triton(x, dim, index, src, reduce, include_self=include_self)
    check(out, reference(x, dim, index, src, reduce, include_self), exact=reduce in ("amax", "amin"))


@covers("large")
@large_only_on_gpu
@pytest.mark.parametrize("reduce", REDUCES)
def test_large(reduce):
    x, index, src = inputs((1024, 512), 1, (1024, 4096), (1024, 4096), torch.float32, reduce)
    for include_self in (True, False):
        check(scatter_reduce_triton(x, 1, index, src, reduce, include_self=include_self),
              reference(x, 1, index, src, reduce, include_self), exact=reduce in ("amax", "amin"))
    x, index, src = inputs((300, 1000), 0, (4000, 1000), (4000, 1000), torch.bfloat16, reduce)
    check(scatter_reduce_triton(x, 0, index, src, reduce), reference(x, 0, index, src, reduce))


@covers("int_dtypes", "errors")
@pytest.mark.parametrize("dtype", INT_DTYPES + [torch.bool])
@pytest.mark.parametrize("reduce", REDUCES)
def test_integers(dtype, reduce):
    x, index, src = inputs((4, 6), 1, (4, 9), (4, 9), dtype)
    for include_self in (True, False):
        # bool: ATen has no mean; its CUDA kernel takes bool for sum only
        if dtype == torch.bool and (reduce == "mean" or (x.is_cuda and reduce != "sum")):
            same_error(lambda: scatter_reduce_triton(x, 1, index, src, reduce, include_self=include_self),
                       lambda: scatter_reduce_reference(x, 1, index, src, reduce, include_self=include_self))
        else:
            check(scatter_reduce_triton(x, 1, index, src, reduce, include_self=include_self),
                  scatter_reduce_reference(x, 1, index, src, reduce, include_self=include_self), exact=True)


@covers("int_dtypes", "params")
@pytest.mark.parametrize("include_self", [True, False])
def test_integer_mean_wraps_and_floors(include_self):
    """ATen sums in the dtype (int8 wraps) and floor-divides (negative means round down)."""
    x = torch.tensor([-7, 3, 5], dtype=torch.int8, device=DEVICE)
    index = torch.tensor([0, 0, 1, 1, 2], device=DEVICE)
    src = torch.tensor([100, 100, -4, -1, 120], dtype=torch.int8, device=DEVICE)
    check(scatter_reduce_triton(x, 0, index, src, "mean", include_self=include_self),
          scatter_reduce_reference(x, 0, index, src, "mean", include_self=include_self), exact=True)


@covers("nonfinite")
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("reduce", REDUCES)
def test_nonfinite(dtype, reduce):
    """NaN from src or from self makes amax/amin NaN; inf and -0 pass through like torch."""
    nan, inf = float("nan"), float("inf")
    x = torch.tensor([1.0, nan, -2.0, 0.0, -inf, 3.0], dtype=dtype, device=DEVICE)
    src = torch.tensor([nan, 5.0, -inf, -0.0, inf, 2.0, -1.0, nan, 4.0], dtype=dtype, device=DEVICE)
    index = torch.tensor([0, 0, 2, 3, 4, 4, 5, 5, 1], device=DEVICE)
    for include_self in (True, False):
        check(scatter_reduce_triton(x, 0, index, src, reduce, include_self=include_self),
              reference(x, 0, index, src, reduce, include_self), exact=reduce in ("amax", "amin"))


@covers("params")
@pytest.mark.parametrize("alias", ["max", "min"])
def test_aliases(alias):
    """ATen takes 'max' and 'min' for amax and amin."""
    x, index, src = inputs((3, 4), 1, (3, 6), (3, 6), torch.float32)
    check(scatter_reduce_triton(x, 1, index, src, alias), scatter_reduce_reference(x, 1, index, src, "a" + alias),
          exact=True)


@covers("empty")
@pytest.mark.parametrize("reduce", REDUCES)
def test_empty_and_scalars(reduce):
    x, src = make((3, 4), torch.float32), make((3, 5), torch.float32)
    for index in (torch.empty(0, dtype=torch.long, device=DEVICE),
                  torch.empty(3, 0, dtype=torch.long, device=DEVICE)):
        check(scatter_reduce_triton(x, 1, index, src, reduce), scatter_reduce_reference(x, 1, index, src, reduce))
    empty = torch.empty(0, 4, device=DEVICE)
    index = torch.empty(0, 2, dtype=torch.long, device=DEVICE)
    assert scatter_reduce_triton(empty, 1, index, empty, reduce).shape == (0, 4)
    scalar, value, zero = make((), torch.float32), make((), torch.float32), torch.tensor(0, device=DEVICE)
    check(scatter_reduce_triton(scalar, 0, zero, value, reduce), scatter_reduce_reference(scalar, 0, zero, value, reduce))
    check(scatter_reduce_triton(scalar, -1, zero, value, reduce, include_self=False),
          scatter_reduce_reference(scalar, -1, zero, value, reduce, include_self=False))


@covers("noncontiguous")
@pytest.mark.parametrize("reduce", ["sum", "amax", "mean"])
def test_noncontiguous(reduce):
    base_x, base_src = make((8, 6), torch.float32), make((12, 10), torch.float32)
    base_index = torch.randint(0, 6, (10, 12), device=DEVICE)
    cases = [(base_x.t(), 0, base_index.t()[:, :4] % 6, base_src[:, ::2]),  # transposed self and index
             (base_x[::2], 1, base_index[:4, ::3], base_src[1::3, :5]),  # strided slices
             (base_x, 1, base_index[:1, :5].expand(8, 5), base_src.t())]  # an expanded index
    for x, dim, index, src in cases:
        for include_self in (True, False):
            check(scatter_reduce_triton(x, dim, index, src, reduce, include_self=include_self),
                  scatter_reduce_reference(x, dim, index, src, reduce, include_self=include_self))
    int_index = base_index[:8, :5].to(torch.int32)  # ATen takes int32 indices too
    check(scatter_reduce_triton(base_x, 1, int_index, base_src, reduce),
          scatter_reduce_reference(base_x, 1, int_index, base_src, reduce))


@covers("out")
@pytest.mark.parametrize("reduce", REDUCES)
def test_out(reduce):
    x, index, src = inputs((5, 6), 1, (5, 8), (5, 8), torch.float32, reduce)
    expected = scatter_reduce_reference(x, 1, index, src, reduce, include_self=False)
    for out in (torch.empty(5, 6, device=DEVICE), torch.empty(6, 5, device=DEVICE).t()):
        assert scatter_reduce_triton(x, 1, index, src, reduce, include_self=False, out=out) is out
        check(out, expected)
    with pytest.warns(UserWarning, match="resized"):
        check(scatter_reduce_triton(x, 1, index, src, reduce, include_self=False, out=torch.empty(3, device=DEVICE)),
              expected)
    overrides = aten_overrides()
    out = torch.empty(0, device=DEVICE)
    assert overrides["aten::scatter_reduce.two_out"](x, 1, index, src, reduce, out=out) is out
    check(out, scatter_reduce_reference(x, 1, index, src, reduce))
    check(overrides["aten::scatter_reduce.two"](x, 1, index, src, reduce, include_self=False), expected)


@covers("inplace", "errors")
@pytest.mark.parametrize("reduce", REDUCES)
def test_inplace(reduce):
    inplace = aten_overrides()["aten::scatter_reduce_.two"]
    assert inplace is scatter_reduce_inplace_triton
    x, index, src = inputs((6, 5), 0, (9, 5), (9, 5), torch.float32, reduce)
    for target in (x.clone(), x.t().contiguous().t()):
        for include_self in (True, False):
            expected = target.clone().scatter_reduce_(0, index, src, reduce, include_self=include_self)
            result = target.clone() if include_self else target
            assert inplace(result, 0, index, src, reduce, include_self=include_self) is result
            check(result, expected)
    overlapping = torch.zeros(6, 1, device=DEVICE).expand(6, 5)
    same_error(lambda: inplace(overlapping, 0, index, src, reduce),
               lambda: overlapping.scatter_reduce_(0, index, src, reduce))


@covers("errors")
def test_errors():
    x, src = make((3, 4), torch.float32), make((3, 5), torch.float32)
    index = torch.randint(0, 4, (3, 5), device=DEVICE)
    bad_calls = [
        (x, 1, index, src, "add", {}), (x, 1, index, src, "Sum", {}),  # unknown reductions
        (x, 1, index.to(torch.int16), src, "sum", {}),  # index dtype
        (x, 1, index.float(), src, "sum", {}),
        (x, 1, index, src.double(), "sum", {}),  # src dtype differs from self
        (x, 2, index, src, "sum", {}), (x, -3, index, src, "sum", {}),  # dim out of range
        (x, 1, index[0], src, "sum", {}),  # index rank
        (x, 1, index, src[0], "amax", {}), (x, 0, index[0], src[0], "sum", {}),  # src rank, index rank
        (x, 1, torch.randint(0, 4, (4, 5), device=DEVICE), src, "sum", {}),  # index larger than self off dim
        (x, 1, torch.randint(0, 4, (3, 6), device=DEVICE), src, "sum", {}),  # index larger than src
        *([(x, 1, index + 4, src, "sum", {}), (x, 1, index - 5, src, "prod", {})]  # out-of-range indices:
          if not ON_GPU else []),  # on CUDA ATen asserts on the device (no exception here), ours skips them
        (x, 1, index, src, "sum", {"out": torch.empty(3, 4, dtype=torch.float64, device=DEVICE)}),  # out dtype
        (x.bool(), 1, index, src.bool(), "mean", {}),  # no bool mean
    ]
    for x_, dim, index_, src_, reduce, kwargs in bad_calls:
        same_error(lambda: scatter_reduce_triton(x_, dim, index_, src_, reduce, **kwargs),
                   lambda: scatter_reduce_reference(x_, dim, index_, src_, reduce, **kwargs))
    same_error(lambda: scatter_reduce_inplace_triton(x.clone(), 1, index, src.half(), "sum"),
               lambda: x.clone().scatter_reduce_(1, index, src.half(), "sum"))


@covers("errors")
@pytest.mark.parametrize("reduce", ["amax", "sum"])
def test_kernel_skips_out_of_range_indices(reduce):
    """What CUDA does with them (no host check there: it would sync): those values are dropped."""
    x, index, src = inputs((3, 5), 1, (3, 6), (3, 6), torch.float32)
    index[0, 1], index[2, 4] = 5, -1
    keep = (index >= 0) & (index < 5)
    neutral = torch.tensor(0.0 if reduce == "sum" else float("-inf"), device=DEVICE)  # what a dropped value adds
    expected = scatter_reduce_reference(x, 1, torch.where(keep, index, 0), torch.where(keep, src, neutral), reduce)
    out = scatter_module._scatter_into(torch.empty_like(x), x, 1, index, src, reduce, True)
    check(out, expected, exact=reduce == "amax")


@covers("params")
def test_through_the_dispatcher(monkeypatch):
    """torch.scatter_reduce and Tensor.scatter_reduce_ reach our kernels once flagstack.ops.enable() runs."""
    from flagstack import ops

    calls = []
    into = scatter_module._scatter_into
    monkeypatch.setattr(scatter_module, "_scatter_into", lambda *a, **k: calls.append(a[-2]) or into(*a, **k))
    x, index, src = inputs((4, 7), 1, (4, 12), (4, 12), torch.float32)
    expected = torch.scatter_reduce(x, 1, index, src, "amin", include_self=False)
    expected_inplace = x.clone().scatter_reduce_(1, index, src, "mean")
    ops.enable(DEVICE.upper(), only=["aten::scatter_reduce.two", "aten::scatter_reduce_.two"])
    try:
        result = torch.scatter_reduce(x, 1, index, src, "amin", include_self=False)
        inplace = x.clone().scatter_reduce_(1, index, src, "mean")
    finally:
        ops.disable()
    check(result, expected, exact=True)
    check(inplace, expected_inplace)
    assert calls == ["amin", "mean"]
