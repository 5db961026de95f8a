"""Activations: Triton kernels vs HF transformers' activation functions (ACT2FN) and torch."""
import importlib

import pytest
import torch
from transformers.activations import ACT2FN

from flagstack.ops import gelu, gelu_and_mul, silu, silu_and_mul, use_backend
from flagstack.ops.activation import (aten_gelu, aten_silu, gelu_and_mul_triton, gelu_triton,
                                      silu_and_mul_triton, silu_triton)
from flagstack.ops.registry import aten_overrides
from tests.ops.helpers import DEVICE, DTYPES, assert_close, gpu_only, rows_for_device

activation_module = importlib.import_module("flagstack.ops.activation")

HF_NAME = {("silu", "none"): "silu", ("gelu", "none"): "gelu", ("gelu", "tanh"): "gelu_pytorch_tanh"}
GATED = [("silu", "none"), ("gelu", "none"), ("gelu", "tanh")]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def hf_gated(x, act, approximate):
    """Qwen3MLP / GemmaMLP: act_fn(gate) * up, each op in the model dtype."""
    n = x.shape[-1] // 2
    return ACT2FN[HF_NAME[act, approximate]](x[..., :n]) * x[..., n:]


def run_gated(x, act, approximate):
    return silu_and_mul_triton(x) if act == "silu" else gelu_and_mul_triton(x, approximate)


def run_pointwise(x, act, approximate):
    return silu_triton(x) if act == "silu" else gelu_triton(x, approximate)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows", rows_for_device([1, 3], [1, 256, 4096]))
@pytest.mark.parametrize("n", rows_for_device([1031, 129, 1], [9728, 129]))
@pytest.mark.parametrize("act,approximate", GATED)
def test_gated_matches_hf(act, approximate, n, rows, dtype):
    x = torch.randn(rows, 2 * n, dtype=dtype, device=DEVICE) * 3
    assert_close(run_gated(x, act, approximate), hf_gated(x, act, approximate))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act,approximate", GATED)
def test_pointwise_matches_hf(act, approximate, dtype):
    x = torch.randn(3, 1031, dtype=dtype, device=DEVICE) * 4
    assert_close(run_pointwise(x, act, approximate), ACT2FN[HF_NAME[act, approximate]](x))


@pytest.mark.parametrize("dtype", DTYPES)
def test_exact_gelu_against_float64(dtype):
    """The A&S erfc formula: within 1e-6 of float64 GELU on [-12, 12] in fp32 (relative 1e-6 above 0),
    and each dtype's tolerance against float64 GELU rounded to that dtype."""
    x = torch.linspace(-12, 12, 24001, device=DEVICE)
    exact = torch.nn.functional.gelu(x.double())
    if dtype == torch.float32:
        err = gelu_triton(x).double() - exact
        assert err.abs().max().item() < 1e-6
        assert (err[x > 0].abs() / exact[x > 0]).max().item() < 1e-6
    xd = x.to(dtype)
    assert_close(gelu_triton(xd), torch.nn.functional.gelu(xd.double()).to(dtype))
    gated = torch.stack([xd, torch.full_like(xd, 1.5)])  # gate = x, up = 1.5: gelu(x) * 1.5
    want = (torch.nn.functional.gelu(xd.double()) * 1.5).to(dtype)
    assert_close(gelu_and_mul_triton(gated.reshape(1, -1)), want[None])


@pytest.mark.parametrize("act,approximate", GATED)
def test_whole_blocks_and_int64_offsets(act, approximate, monkeypatch):
    """Element counts that fill whole 1024-blocks (no bounds masks), then the int64-offset kernels
    (taken above 2^31 elements; forced here by lowering the bound)."""
    x = torch.randn(2, 2 * 1024, device=DEVICE) * 3
    flat = torch.randn(3 * 1024, device=DEVICE) * 4
    for _ in range(2):
        assert_close(run_gated(x, act, approximate), hf_gated(x, act, approximate))
        assert_close(run_pointwise(flat, act, approximate), ACT2FN[HF_NAME[act, approximate]](flat))
        monkeypatch.setattr(activation_module, "INT32_MAX_ELEMENTS", 0)


@pytest.mark.parametrize("act,approximate", GATED)
def test_nonfinite_empty_and_strided(act, approximate):
    special = torch.tensor([float("inf"), float("-inf"), float("nan"), -0.0, 0.0, -90.0, 90.0, 1e30, -1e30],
                           device=DEVICE)
    torch_fn = ACT2FN[HF_NAME[act, approximate]]
    # The reference one element at a time: torch 2.13's AVX-512 CPU kernel gives gelu(inf) = nan in its vector
    # lanes and inf in its scalar tail (float64 gives inf too, as the math does)
    one_by_one = torch.cat([torch_fn(value.reshape(1)) for value in special])
    assert_close(run_pointwise(special, act, approximate), one_by_one)
    up = torch.randn(9, device=DEVICE)
    assert_close(run_gated(torch.cat([special, up])[None], act, approximate), (one_by_one * up)[None])
    assert run_gated(torch.empty(0, 8, device=DEVICE), act, approximate).shape == (0, 4)
    assert run_pointwise(torch.empty(2, 0, device=DEVICE), act, approximate).shape == (2, 0)
    base = torch.randn(4, 5, 40, device=DEVICE)
    strided = base[:, ::2, 8:]  # strided rows, unit last stride: no copy
    assert_close(run_gated(strided, act, approximate), hf_gated(strided, act, approximate))
    transposed = torch.randn(16, 6, device=DEVICE).t()
    assert_close(run_gated(transposed, act, approximate), hf_gated(transposed, act, approximate))
    assert_close(run_pointwise(transposed, act, approximate), torch_fn(transposed))
    scalar = torch.tensor(1.5, device=DEVICE)
    assert_close(run_pointwise(scalar, act, approximate), torch_fn(scalar))


def test_dispatch_and_errors():
    x = torch.randn(2, 6)
    with use_backend("reference"):
        assert_close(silu_and_mul(x), hf_gated(x, "silu", "none"))
        assert_close(gelu_and_mul(x, "tanh"), hf_gated(x, "gelu", "tanh"))
        assert_close(silu(x), torch.nn.functional.silu(x))
        assert_close(gelu(x), torch.nn.functional.gelu(x))
    with pytest.raises(ValueError, match="must be even"):
        silu_and_mul(torch.randn(2, 5))
    with pytest.raises(ValueError, match="approximate must be one of"):
        gelu_and_mul(x, "erf")
    with pytest.raises(ValueError, match="approximate must be one of"):
        gelu(x, approximate="fast")
    with pytest.raises(ValueError, match="x must have dtype"):
        silu(x.long())
    with pytest.raises(ValueError, match="x must be a torch.Tensor"):
        silu_and_mul([1.0, 2.0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_aten_overrides(dtype):
    overrides = aten_overrides()
    assert overrides["aten::silu"] is aten_silu and overrides["aten::gelu"] is aten_gelu
    x = torch.randn(4, 33, dtype=dtype, device=DEVICE)
    assert_close(aten_silu(x), torch.nn.functional.silu(x), dtype=dtype if dtype != torch.float64 else torch.float32)
    for approximate in ("none", "tanh"):
        want = torch.nn.functional.gelu(x, approximate=approximate)
        assert_close(aten_gelu(x, approximate=approximate), want,
                     dtype=dtype if dtype != torch.float64 else torch.float32)
    with pytest.raises(ValueError, match="approximate"):
        aten_gelu(x, approximate="bad")


@gpu_only
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("rows", [1, 256, 4096, 32768])
@pytest.mark.parametrize("act,approximate", GATED)
def test_qwen3_shapes_gpu(act, approximate, rows, dtype):
    x = torch.randn(rows, 2 * 9728, dtype=dtype, device="cuda")
    assert_close(run_gated(x, act, approximate), hf_gated(x, act, approximate))
    assert_close(run_pointwise(x, act, approximate), ACT2FN[HF_NAME[act, approximate]](x))
