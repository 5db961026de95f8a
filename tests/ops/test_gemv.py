"""gemv (batch-1 Linear) and silu_mul_gemv (the down projection with silu_and_mul folded in): against
F.linear computed in float64 and rounded once, on odd and real shapes."""
import pytest
import torch

from flagstack.ops import get, gemv, silu_mul_gemv, use_backend
from flagstack.ops.activation import silu_and_mul_triton
from flagstack.ops.gemv import (CONFIG, QWEN3_4B_SHAPES, gemv_triton, rows_per_program, silu_mul_gemv_reference,
                                 silu_mul_gemv_triton)
from flagstack.ops.selftest import check_case
from tests.ops.helpers import DEVICE, DTYPES, ON_GPU, assert_close, gpu_only

ODD_SHAPES = [(1, 1), (3, 5), (9, 1030), (37, 300), (8, 1024)]  # N, K: partial row and column tiles


def _inputs(n: int, k: int, dtype: torch.dtype, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator(device=DEVICE).manual_seed(seed)
    x = torch.randn(1, k, device=DEVICE, generator=g).to(dtype)
    w = (torch.randn(n, k, device=DEVICE, generator=g) / k ** 0.5).to(dtype)
    return x, w


def _expected(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.linear(x.double(), w.double()).to(x.dtype)


@pytest.mark.parametrize("config", [None, CONFIG], ids=["default", "4-rows"])  # short weights: 1 row
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16] if not ON_GPU else DTYPES)
@pytest.mark.parametrize("n, k", ODD_SHAPES)
def test_odd_shapes(n, k, dtype, config):
    x, w = _inputs(n, k, dtype)
    assert_close(gemv_triton(x, w, config), _expected(x, w), reduce_dim=10)


def test_rows_per_program_keeps_every_sm_busy():
    assert [rows_per_program(n, 132) for n, _ in QWEN3_4B_SHAPES] == [4, 4, 4, 4]
    assert [rows_per_program(n, 132) for n in (1, 256, 576, 1536)] == [1, 1, 2, 4]


@gpu_only
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n, k", QWEN3_4B_SHAPES)
def test_qwen3_shapes(n, k, dtype):
    x, w = _inputs(n, k, dtype)
    assert_close(gemv_triton(x, w), _expected(x, w), reduce_dim=10)


def test_vector_input_noncontiguous_weight_and_empty():
    x, w = _inputs(40, 24, torch.float32)
    wt = w.t().contiguous().t()  # same values, column-major
    assert_close(gemv_triton(x[0], wt), _expected(x, w)[0], reduce_dim=10)
    assert gemv_triton(x, w[:0]).shape == (1, 0)
    assert torch.equal(gemv_triton(x[:, :0], w[:, :0]), torch.zeros(1, 40, device=DEVICE))


def test_dispatch_and_errors():
    x, w = _inputs(6, 16, torch.float32)
    with use_backend("triton"):
        assert_close(gemv(x, w), _expected(x, w), reduce_dim=10)
    for bad, match in (((torch.zeros(2, 16, device=DEVICE), w), "one row"),
                       ((torch.zeros(1, 8, device=DEVICE), w), "weight.shape"),
                       ((x, w.half()), "dtype"), ((x, w[0]), "weight")):
        with pytest.raises(ValueError, match=match):
            gemv(*bad)


# silu_mul_gemv: the down projection with silu_and_mul folded in (x = [gate | up], 2K wide)

def _silu_mul_expected(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up in float64 rounded to x's dtype (as silu_and_mul stores it), then the product in
    float64, rounded once."""
    gate, up = x.double().chunk(2, dim=-1)
    act = (torch.nn.functional.silu(gate) * up).to(x.dtype)
    return torch.nn.functional.linear(act.double(), w.double()).to(x.dtype)


def _gate_up(k: int, dtype: torch.dtype, seed: int = 1) -> torch.Tensor:
    g = torch.Generator(device=DEVICE).manual_seed(seed)
    return (torch.randn(1, 2 * k, device=DEVICE, generator=g) * 3).to(dtype)  # both silu branches


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16] if not ON_GPU else DTYPES)
@pytest.mark.parametrize("n, k", [(1, 1), (9, 1030), (37, 300)])
def test_silu_mul_odd_shapes_and_unfused_path(n, k, dtype):
    x, (_, w) = _gate_up(k, dtype), _inputs(n, k, dtype)
    out = silu_mul_gemv_triton(x, w)
    assert_close(out, _silu_mul_expected(x, w), reduce_dim=10)
    unfused = gemv_triton(silu_and_mul_triton(x), w)  # the engine's unfused CUDA path
    if ON_GPU:  # GPU exp may round differently in the two kernels' code: compare within tolerance
        assert_close(out, unfused)
    else:
        assert torch.equal(out, unfused)


@gpu_only
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_silu_mul_qwen3_down_shape(dtype):
    n, k = QWEN3_4B_SHAPES[3]
    x, (_, w) = _gate_up(k, dtype), _inputs(n, k, dtype)
    out = silu_mul_gemv_triton(x, w)
    assert_close(out, _silu_mul_expected(x, w), reduce_dim=10)
    assert_close(out, gemv_triton(silu_and_mul_triton(x), w))
    assert_close(out, silu_mul_gemv_reference(x, w), reduce_dim=10)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_silu_mul_rounds_the_activation_once_to_nearest(dtype):
    """With W = I each output is the activation itself, which must be silu(gate) * up in fp32 rounded once
    to nearest (under the interpreter too: ops.interpreter_compat makes its fp32 -> bf16 casts round)."""
    x = _gate_up(300, dtype)
    gate, up = x.float().chunk(2, dim=-1)
    want = (torch.nn.functional.silu(gate) * up).to(dtype)
    assert torch.equal(silu_mul_gemv_triton(x, torch.eye(300, dtype=dtype, device=DEVICE)), want)


def test_silu_mul_passes_its_self_check_in_bf16():
    """`flagstack ops test` on its bench case (Qwen3-4B's down width, 5 rows of W), bf16 on CPU too."""
    result = check_case(get("silu_mul_gemv"), 5, torch.bfloat16, DEVICE)
    assert result.status == "pass", result.detail


def test_silu_mul_vector_strided_input_empty_and_reference():
    x, (_, w) = _gate_up(24, torch.float32), _inputs(40, 24, torch.float32)
    want = _silu_mul_expected(x, w)
    strided = torch.stack([x, -x], dim=-1).flatten(-2)[:, ::2]  # x's values at stride 2
    assert_close(silu_mul_gemv_triton(strided[0], w.t().contiguous().t()), want[0], reduce_dim=10)
    assert_close(silu_mul_gemv_reference(x, w), want, reduce_dim=10)
    assert silu_mul_gemv_triton(x, w[:0]).shape == (1, 0)
    assert torch.equal(silu_mul_gemv_triton(x[:, :0], w[:, :0]), torch.zeros(1, 40, device=DEVICE))


def test_silu_mul_dispatch_and_errors():
    x, (_, w) = _gate_up(16, torch.float32), _inputs(6, 16, torch.float32)
    for backend in ("triton", "reference"):
        with use_backend(backend):
            assert_close(silu_mul_gemv(x, w), _silu_mul_expected(x, w), reduce_dim=10)
    for bad, match in (((torch.zeros(2, 32, device=DEVICE), w), "one row"),
                       ((x[:, :16], w), r"2 \* weight.shape\[1\] \(\[gate \| up\]\) \(32\), got 16"),
                       ((x, w.half()), "weight dtype"), ((x, w[0]), "weight must have 2 dimensions"),
                       ((x[None], w), "x must have 1..2 dimensions"), (([0.0] * 32, w), "x must be a torch")):
        with pytest.raises(ValueError, match=match):
            silu_mul_gemv(*bad)
