"""The CPU GEMM on oneDNN-packed weights against float64 matmuls, its cache of packed
weights, and its fallbacks (autograd, switch off, other dtypes)."""
import pytest
import torch

from flagstack.engine.models import layers
from tests.ops.helpers import assert_close

needs_onednn = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN")


def expected(x, weight, bias=None):
    out = x.double() @ weight.double().t()
    return (out if bias is None else out + bias.double()).float()


@needs_onednn
@pytest.mark.parametrize("rows", [1, 3, 64, 65, 300])
def test_packed_linear_matches_float64(rows):
    torch.manual_seed(rows)
    x, weight, bias = torch.randn(rows, 96)[:, 8:72], torch.randn(40, 64), torch.randn(40)
    with torch.inference_mode():
        out = layers.linear(x, weight, bias)
    assert out.shape == (rows, 40) and out.is_contiguous()
    assert_close(out, expected(x, weight, bias), atol=1e-5)


@needs_onednn
def test_packed_copy_made_once_and_redone_after_an_in_place_change():
    weight, x = torch.randn(16, 32), torch.randn(4, 32)
    first = layers.packed_weight(weight)
    assert layers.packed_weight(weight) is first
    weight.mul_(2.0)  # as a loader copying new values in
    assert layers.packed_weight(weight) is not first
    assert_close(layers.linear(x, weight), expected(x, weight), atol=1e-5)


def test_autograd_and_switch_fall_back(monkeypatch):
    weight = torch.nn.Parameter(torch.randn(8, 16))
    x = torch.randn(2, 16)
    out = layers.linear(x, weight)  # grad enabled, weight requires grad: the differentiable form
    out.sum().backward()
    assert_close(weight.grad, x.sum(0).expand(8, 16).contiguous())
    monkeypatch.setenv("FLAGSTACK_CPU_PACKED", "0")
    assert not layers.cpu_packing_enabled()
    with torch.no_grad():
        assert_close(layers.linear(x, weight), expected(x, weight.detach()), atol=1e-5)


@pytest.mark.parametrize("rows", [3, 100])
def test_float64_rows_keep_their_dtype(rows):
    x, weight = torch.randn(rows, 16, dtype=torch.float64), torch.randn(8, 16, dtype=torch.float64)
    with torch.inference_mode():
        out = layers.linear(x, weight)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, x @ weight.t())


@needs_onednn
@pytest.mark.parametrize("rows", [1, 2, 64, 300])
def test_packed_bf16_linear_matches_float64(rows):
    """bf16 packs at every row count, one row included (oneDNN's bf16 GEMV beat the unpacked forms 2-5x)."""
    torch.manual_seed(rows)
    x = torch.randn(rows, 96)[:, 8:72].bfloat16()
    weight, bias = torch.randn(40, 64).bfloat16(), torch.randn(40).bfloat16()
    with torch.inference_mode():
        out = layers.linear(x, weight, bias)
    assert out.shape == (rows, 40) and out.dtype == torch.bfloat16 and out.is_contiguous()
    want = expected(x.float(), weight.float(), bias.float())
    torch.testing.assert_close(out.float(), want, atol=0.05, rtol=0.01)  # bf16 output rounding: 2^-8 of ~8
    assert layers._PACKED.get(weight) is not None
