"""Shared test machinery for the challenge ops: inputs, comparison against torch, error parity, runs
through the ATen overrides, and a reusable suite for unary elementwise ops (subclass UnaryOpSuite in an
op's test file)."""
from __future__ import annotations

import contextlib
from typing import Callable

import pytest
import torch

from flagstack.ops.aten import use_aten
from flagstack.ops.registry import aten_overrides
from tests.ops.helpers import DEVICE, ON_GPU, assert_close

covers = pytest.mark.covers
SMALL_SHAPES = [(7,), (3, 5)]
REGULAR_SHAPES = [(64, 129), (2, 3, 4, 33)]
LARGE_SHAPES = [(4096, 4096), (3, 1000, 1003)] if ON_GPU else []
INT_DTYPES = [torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64]
FLOAT_DTYPES = [torch.float32, torch.float16, torch.bfloat16]
large_only_on_gpu = pytest.mark.skipif(not ON_GPU, reason="large shapes run on a GPU only")


def make(shape, dtype: torch.dtype, low: float = -3.0, high: float = 3.0, device: str = DEVICE) -> torch.Tensor:
    """Random values in [low, high) (integers for integer dtypes), on the test device."""
    if dtype == torch.bool:
        return torch.rand(shape, device=device) > 0.5
    if not dtype.is_floating_point:
        info = torch.iinfo(dtype)
        return torch.randint(max(int(low), info.min), min(int(high), info.max) + 1, shape,
                             dtype=dtype, device=device)
    return (torch.rand(shape, device=device, dtype=torch.float32) * (high - low) + low).to(dtype)


def check(out: torch.Tensor, ref: torch.Tensor, exact: bool = False) -> None:
    """Exact comparison for exact results; otherwise the challenge's per-dtype tolerance."""
    if exact:
        assert out.dtype == ref.dtype and out.shape == ref.shape
        torch.testing.assert_close(out, ref, rtol=0, atol=0, equal_nan=True)
    else:
        assert_close(out, ref)


def same_error(ours: Callable, theirs: Callable) -> None:
    """Both callables must raise, and with the same exception type (the ATen contract)."""
    with pytest.raises(Exception) as expected:
        theirs()
    with pytest.raises(expected.type):
        ours()


def check_binary_errors(ours: Callable, theirs: Callable, a: torch.Tensor, rejected: torch.Tensor,
                        bad_out_dtype: torch.dtype) -> None:
    """Error parity every binary elementwise op needs, against torch's op: operands of a dtype it rejects,
    shapes that do not broadcast (a with a[:-1]), an out= of a dtype the result cannot be cast to."""
    bad_out = torch.empty(a.shape, dtype=bad_out_dtype, device=a.device)
    for args, kwargs in (((rejected, rejected), {}), ((a, a[:-1]), {}), ((a, a), {"out": bad_out})):
        same_error(lambda: ours(*args, **kwargs), lambda: theirs(*args, **kwargs))


def through_overrides(fn: Callable, x: torch.Tensor, only: list[str]) -> list[tuple]:
    """[(fn(x), its gradient wrt x) with ATen's own kernels, the same with ours installed for the ATen ops
    in `only` (flagstack.ops.use_aten)]; one random upstream gradient (of fn's first result) for both."""
    x = x.detach().requires_grad_()
    upstream, runs = None, []
    for names in (None, only):
        with use_aten(DEVICE.upper(), only=names) if names else contextlib.nullcontext():
            result = fn(x)
            first = result[0] if isinstance(result, tuple) else result
            upstream = torch.randn_like(first) if upstream is None else upstream
            grad, = torch.autograd.grad(first, x, upstream)
        runs.append((tuple(r.detach() for r in result) if isinstance(result, tuple) else result.detach(), grad))
    return runs


def nonfinite(dtype: torch.dtype) -> torch.Tensor:
    """inf, -inf, nan, -0, 0 and ordinary values of `dtype`."""
    vals = [float("inf"), float("-inf"), float("nan"), -0.0, 0.0, 1.0, -2.5, 0.5]
    return torch.tensor(vals, dtype=dtype, device=DEVICE)


class UnaryOpSuite:
    """Tests every unary elementwise op shares. Subclasses set `ours(x, *, out=None)` and
    `theirs(x, *, out=None)` (torch's op), the input domain, and whether integers are accepted."""

    aten = ""  # ATen name: the in-place form aten::<name>_ is tested through our ATen adapter
    low, high = -3.0, 3.0
    accepts_int = True

    def ours(self, x, **kw):
        raise NotImplementedError

    def theirs(self, x, **kw):
        raise NotImplementedError

    @covers("small", "regular", "ranks", "float_dtypes")
    @pytest.mark.parametrize("dtype", FLOAT_DTYPES)
    @pytest.mark.parametrize("shape", SMALL_SHAPES + REGULAR_SHAPES + [()])
    def test_shapes_dtypes(self, shape, dtype):
        x = make(shape, dtype, self.low, self.high)
        check(self.ours(x), self.theirs(x))

    @covers("large")
    @large_only_on_gpu
    @pytest.mark.parametrize("shape", LARGE_SHAPES)
    def test_large(self, shape):
        x = make(shape, torch.float32, self.low, self.high)
        check(self.ours(x), self.theirs(x))

    @covers("int_dtypes", "errors")
    @pytest.mark.parametrize("dtype", INT_DTYPES + [torch.bool])
    def test_integer_inputs(self, dtype):
        x = make((5, 6), dtype, 0, 9)
        if self.accepts_int:
            check(self.ours(x), self.theirs(x))
        else:
            same_error(lambda: self.ours(x), lambda: self.theirs(x))

    @covers("nonfinite")
    @pytest.mark.parametrize("dtype", FLOAT_DTYPES)
    def test_nonfinite(self, dtype):
        x = nonfinite(dtype)
        out, ref = self.ours(x), self.theirs(x)
        check(out, ref)
        numbers = ~ref.isnan()
        assert torch.equal(out[numbers].signbit(), ref[numbers].signbit())  # -0 stays -0

    @covers("empty")
    def test_empty(self):
        x = torch.empty(0, 3, device=DEVICE)
        assert self.ours(x).shape == (0, 3)

    @covers("noncontiguous")
    def test_noncontiguous(self):
        base = make((20, 34), torch.float32, self.low, self.high)
        for x in (base.t(), base[::2, 1::3], base.unsqueeze(0).expand(3, 20, 34)):
            out = self.ours(x)
            check(out, self.theirs(x))
        assert self.ours(base.t()).stride() == self.theirs(base.t()).stride()  # layout kept, as ATen

    @covers("out")
    def test_out(self):
        x = make((6, 7), torch.float32, self.low, self.high)
        out = torch.empty(6, 7, device=DEVICE)
        assert self.ours(x, out=out) is out
        check(out, self.theirs(x))
        strided = torch.empty(7, 6, device=DEVICE).t()
        self.ours(x, out=strided)
        check(strided, self.theirs(x))
        half = torch.empty(6, 7, dtype=torch.float16, device=DEVICE)
        check(self.ours(x, out=half), self.theirs(x, out=torch.empty_like(half)))
        with pytest.warns(UserWarning, match="resized"):
            resized = self.ours(x, out=torch.empty(2, device=DEVICE))
        check(resized, self.theirs(x))

    @covers("errors")
    def test_out_errors(self):
        x = make((4,), torch.float32, self.low, self.high)
        bad = torch.empty(4, dtype=torch.int64, device=DEVICE)
        same_error(lambda: self.ours(x, out=bad), lambda: self.theirs(x, out=bad.clone()))

    @covers("inplace", "errors")
    def test_inplace(self):
        inplace = aten_overrides()[f"aten::{self.aten}_"]
        x = make((9, 8), torch.float32, self.low, self.high)
        for target in (x.clone(), x.clone().t()):
            expected = getattr(torch.ops.aten, self.aten + "_")(target.clone())
            assert inplace(target) is target
            check(target, expected)
        ints = make((4,), torch.int32, 0, 5)
        same_error(lambda: inplace(ints.clone()), lambda: getattr(torch.ops.aten, self.aten + "_")(ints.clone()))
