"""rms_norm: Triton kernel vs the PyTorch reference (and vs torch's own F.rms_norm in fp32)."""
import pytest
import torch

from flagstack.ops import rms_norm, use_backend
from flagstack.ops.rms_norm import rms_norm_reference, rms_norm_triton
from tests.ops.helpers import DEVICE, DTYPES, assert_close, rows_for_device


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows", rows_for_device([1, 3], [1, 256, 4096]))
@pytest.mark.parametrize("hidden", [2560, 129])
def test_matches_reference(rows, hidden, dtype):
    x = torch.randn(rows, hidden, dtype=dtype, device=DEVICE)
    w = torch.randn(hidden, dtype=dtype, device=DEVICE)
    assert_close(rms_norm_triton(x, w, 1e-6), rms_norm_reference(x, w, 1e-6))


def test_reference_matches_torch_rms_norm():
    x, w = torch.randn(4, 64, dtype=torch.float64), torch.randn(64, dtype=torch.float64)
    expected = torch.nn.functional.rms_norm(x, (64,), w, 1e-6)
    assert_close(rms_norm_reference(x.float(), w.float()), expected.float())


def test_non_contiguous_and_3d():
    x = torch.randn(2, 8, 96, dtype=torch.float32, device=DEVICE)[:, ::2]  # strided rows
    w = torch.randn(96, device=DEVICE)
    assert_close(rms_norm_triton(x, w), rms_norm_reference(x, w))
    xt = torch.randn(96, 6, device=DEVICE).t()  # last dim not unit-stride
    assert_close(rms_norm_triton(xt, w), rms_norm_reference(xt, w))


def test_empty_and_nonfinite():
    w = torch.ones(16, device=DEVICE)
    assert rms_norm_triton(torch.empty(0, 16, device=DEVICE), w).shape == (0, 16)
    x = torch.randn(3, 16, device=DEVICE)
    x[0, 1], x[1, 2] = float("inf"), float("nan")
    assert_close(rms_norm_triton(x, w), rms_norm_reference(x, w))


def test_dispatch_and_errors():
    x, w = torch.randn(2, 8), torch.randn(8)
    with use_backend("reference"):
        assert_close(rms_norm(x, w), rms_norm_reference(x, w))
    with pytest.raises(ValueError, match="weight size"):
        rms_norm(x, torch.randn(7))
    with pytest.raises(ValueError, match="x must have dtype"):
        rms_norm(x.long(), w)
    with pytest.raises(ValueError, match="eps"):
        rms_norm(x, w, 0.0)
    with pytest.raises(ValueError, match="backend must be one of"):
        use_backend("cuda").__enter__()
