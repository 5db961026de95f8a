"""gcd: Triton kernel against torch.gcd, exact (integer dtypes, signs, broadcasting, out=, in-place)."""
import pytest
import torch

from flagstack.ops.challenge.gcd import gcd_inplace, gcd_triton
from tests.ops.challenge.common import (FLOAT_DTYPES, INT_DTYPES, LARGE_SHAPES, REGULAR_SHAPES, SMALL_SHAPES,
                                        check, check_binary_errors, covers, large_only_on_gpu, make, same_error)
from tests.ops.helpers import DEVICE


def ints(shape, dtype, span=None):
    info = torch.iinfo(dtype)
    low, high = (info.min, info.max) if span is None else (max(-span, info.min), min(span, info.max))
    return torch.randint(low, high, shape, dtype=dtype, device=DEVICE)


@covers("small", "regular", "ranks", "int_dtypes")
@pytest.mark.parametrize("dtype", INT_DTYPES)
@pytest.mark.parametrize("shape", SMALL_SHAPES + REGULAR_SHAPES + [()])
def test_shapes_dtypes(shape, dtype):
    a, b = ints(shape, dtype), ints(shape, dtype)
    check(gcd_triton(a, b), torch.gcd(a, b), exact=True)


@covers("large")
@large_only_on_gpu
@pytest.mark.parametrize("shape", LARGE_SHAPES)
def test_large(shape):
    a, b = ints(shape, torch.int32), ints(shape, torch.int32)
    check(gcd_triton(a, b), torch.gcd(a, b), exact=True)


@covers("params", "nonfinite")  # integers have no inf/nan: their special values are 0, +-1, MIN, MAX
def test_special_values():
    vals = torch.tensor([0, 1, -1, 12, -18, 2**31 - 1, -2**31, 2**30, 7919], dtype=torch.int32, device=DEVICE)
    a, b = vals[:, None].expand(9, 9), vals[None, :].expand(9, 9)  # every pair, including INT_MIN
    check(gcd_triton(a, b), torch.gcd(a, b), exact=True)
    big = torch.tensor([2**62, -2**63, 10**18, 0], device=DEVICE)
    check(gcd_triton(big, big.flip(0)), torch.gcd(big, big.flip(0)), exact=True)
    # int64 around the int32 range, where the kernel moves from 64-bit to 32-bit steps
    edge = torch.tensor([2**31, -2**31, 2**31 - 1, -2**31 - 1, 2**32 + 6, 6, -2**63, 3 * 2**40, 0],
                        device=DEVICE)
    a, b = edge[:, None].expand(9, 9), edge[None, :].expand(9, 9)
    check(gcd_triton(a, b), torch.gcd(a, b), exact=True)


def edge_values(dtype):
    """A dtype's edge values: 0, +-1, MIN, MIN + 1, MAX, MAX - 1, powers of two up to the top bit (where
    binary GCD caps its trailing-zero count), odd multiples of large powers of two, small primes."""
    info = torch.iinfo(dtype)
    top = info.bits - 1 if info.min < 0 else info.bits  # value bits below the sign
    candidates = [0, 1, -1, 2, 3, 6, -12, 7, 97, 2 ** (top // 2), -(3 * 2 ** (top // 2)), 2 ** (top - 1),
                  -(2 ** (top - 1)), 3 * 2 ** (top - 2), info.max, info.max - 1, info.min, info.min + 1]
    in_range = sorted({v for v in candidates if info.min <= v <= info.max})
    return torch.tensor(in_range, dtype=dtype, device=DEVICE)


@covers("params", "int_dtypes")
@pytest.mark.parametrize("dtype", INT_DTYPES)
def test_edge_pairs(dtype):
    """Every ordered pair of edge values (equal values, one zero, MIN with each, MAX with each)."""
    vals = edge_values(dtype)
    a, b = vals[:, None].expand(len(vals), len(vals)), vals[None, :].expand(len(vals), len(vals))
    check(gcd_triton(a, b), torch.gcd(a, b), exact=True)


@covers("params")
@pytest.mark.parametrize("dtype", [torch.int32, torch.int64])
def test_common_factors_and_quirk_lanes(dtype):
    """Pairs sharing 2^k and a large odd factor, a MIN lane among them (ATen's Euclid runs in that
    block, binary GCD in the others' lanes), and for int64 wide results next to lanes that finish in
    32-bit steps."""
    info = torch.iinfo(dtype)
    n = 3000
    odd_factor = torch.randint(1, 2 ** 10, (n,), dtype=dtype, device=DEVICE) * 2 + 1
    if dtype == torch.int64:
        odd_factor[::3] = 2 ** 40 + 15  # 2^40 + 15 is odd: gcds that stay wider than int32
    twos = torch.randint(0, 8, (n,), dtype=dtype, device=DEVICE)
    a = ints((n,), dtype, 2 ** 12) * odd_factor << twos
    b = ints((n,), dtype, 2 ** 12) * odd_factor << twos
    a[7], b[100], a[2999], b[2999] = info.min, info.min, info.min, 6
    check(gcd_triton(a, b), torch.gcd(a, b), exact=True)


@covers("broadcast", "params", "int_dtypes")
@pytest.mark.parametrize("shapes", [((3, 1, 5), (4, 1)), ((), (4, 5)), ((6, 1), (1, 7))])
def test_broadcasting_and_promotion(shapes):
    a, b = ints(shapes[0], torch.int16, 1000), ints(shapes[1], torch.int64, 10**6)
    check(gcd_triton(a, b), torch.gcd(a, b), exact=True)
    check(gcd_triton(b.to(torch.uint8), a.to(torch.int8)), torch.gcd(b.to(torch.uint8), a.to(torch.int8)), exact=True)


@covers("empty")
def test_empty():
    a = torch.empty(0, 4, dtype=torch.int32, device=DEVICE)
    assert gcd_triton(a, a).shape == (0, 4)


@covers("noncontiguous")
def test_noncontiguous():
    a, b = ints((12, 10), torch.int64, 10**4), ints((10, 12), torch.int64, 10**4)
    check(gcd_triton(a, b.t()), torch.gcd(a, b.t()), exact=True)
    check(gcd_triton(a[::3, 1::2], b.t()[::3, ::2]), torch.gcd(a[::3, 1::2], b.t()[::3, ::2]), exact=True)


@covers("out", "inplace")
def test_out_and_inplace():
    a, b = ints((5, 6), torch.int32, 500), ints((6,), torch.int32, 500)
    out = torch.empty(5, 6, dtype=torch.int64, device=DEVICE)
    assert gcd_triton(a, b, out=out) is out
    check(out, torch.gcd(a, b).long(), exact=True)
    target = a.clone()
    assert gcd_inplace(target, b) is target
    check(target, torch.gcd(a, b), exact=True)
    narrow = a.clone()
    gcd_inplace(narrow, b.long())  # int64 result cast back into int32 self, as ATen does
    check(narrow, a.clone().gcd_(b.long()), exact=True)
    transposed = a.clone().t().contiguous().t()
    check(gcd_inplace(transposed, b), torch.gcd(a, b), exact=True)


@covers("errors", "float_dtypes")
@pytest.mark.parametrize("dtype", FLOAT_DTYPES + [torch.bool])
def test_errors(dtype):
    check_binary_errors(gcd_triton, torch.gcd, ints((3,), torch.int32), make((4,), dtype, 1, 5), torch.bool)


@covers("errors", "inplace", "out")
def test_inplace_and_out_errors():
    small, wide = ints((3,), torch.int64, 9), ints((2, 3), torch.int64, 9)
    same_error(lambda: gcd_inplace(small.clone(), wide), lambda: small.clone().gcd_(wide))
    bad = torch.empty(3, dtype=torch.bool, device=DEVICE)
    same_error(lambda: gcd_triton(small, small, out=bad), lambda: torch.gcd(small, small, out=bad))
    as_float = torch.empty(3, dtype=torch.float32, device=DEVICE)  # ATen allows a float out
    check(gcd_triton(small, small, out=as_float), torch.gcd(small, small).float(), exact=True)
