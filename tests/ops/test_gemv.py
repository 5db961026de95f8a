"""gemv (batch-1 Linear): against F.linear computed in float64 and rounded once, on odd and real shapes."""
import pytest
import torch

from flagstack.ops import gemv, use_backend
from flagstack.ops.gemv import QWEN3_4B_SHAPES, gemv_triton
from tests.ops.helpers import DEVICE, DTYPES, ON_GPU, assert_close, gpu_only

ODD_SHAPES = [(1, 1), (3, 5), (9, 1030), (37, 300), (8, 1024)]  # N, K: partial row and column tiles


def _inputs(n: int, k: int, dtype: torch.dtype, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator(device=DEVICE).manual_seed(seed)
    x = torch.randn(1, k, device=DEVICE, generator=g).to(dtype)
    w = (torch.randn(n, k, device=DEVICE, generator=g) / k ** 0.5).to(dtype)
    return x, w


def _expected(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.linear(x.double(), w.double()).to(x.dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16] if not ON_GPU else DTYPES)
@pytest.mark.parametrize("n, k", ODD_SHAPES)
def test_odd_shapes(n, k, dtype):
    x, w = _inputs(n, k, dtype)
    assert_close(gemv_triton(x, w), _expected(x, w), reduce_dim=10)


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
