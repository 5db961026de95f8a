"""add_rms_norm and the aten::rms_norm override: Triton kernel vs HF-style PyTorch math."""
import pytest
import torch

from flagstack.ops import add_rms_norm, use_backend
from flagstack.ops.registry import aten_overrides
from flagstack.ops.rms_norm import add_rms_norm_reference, add_rms_norm_triton, aten_rms_norm
from tests.ops.helpers import DEVICE, DTYPES, ON_GPU, assert_close, gpu_only, rows_for_device


def hf_add_rms_norm(x, residual, weight, eps):
    """Qwen3 decoder layer: residual = residual + x in the model dtype, then Qwen3RMSNorm (fp32 maths)."""
    summed = residual + x
    sf = summed.float()
    return (sf * torch.rsqrt(sf.pow(2).mean(-1, keepdim=True) + eps) * weight.float()).to(x.dtype), summed


def check_against_hf(x, residual, weight, eps=1e-6):
    want_out, want_res = hf_add_rms_norm(x, residual.clone(), weight, eps)
    res_before = residual
    out, res = add_rms_norm_triton(x, residual, weight, eps)
    assert res is res_before, "the residual must be updated in place and returned"
    assert_close(res, want_res, atol=0)  # rounding the sum once is exact: bit-for-bit
    assert_close(out, want_out, reduce_dim=1)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows", rows_for_device([1, 5], [1, 256, 4096]))
@pytest.mark.parametrize("hidden", [2560, 129, 128, 5000])  # 5000: over 4096, 8 warps
def test_matches_hf(rows, hidden, dtype):
    x = torch.randn(rows, hidden, dtype=dtype, device=DEVICE)
    residual = torch.randn(rows, hidden, dtype=dtype, device=DEVICE)
    check_against_hf(x, residual, torch.randn(hidden, dtype=dtype, device=DEVICE))


def test_non_contiguous_3d_and_transposed_residual():
    w = torch.randn(96, device=DEVICE)
    x = torch.randn(2, 8, 96, device=DEVICE)[:, ::2]
    check_against_hf(x, torch.randn(2, 4, 96, device=DEVICE), w)
    base = torch.randn(6, 200, device=DEVICE)
    check_against_hf(torch.randn(6, 96, device=DEVICE), base[:, :96], w)  # strided rows, written in place
    assert base[:, 96:].abs().sum() > 0
    residual_t = torch.randn(96, 6, device=DEVICE).t()  # no 2-D row view: copy written back
    check_against_hf(torch.randn(6, 96, device=DEVICE), residual_t, w)


def test_empty_and_nonfinite():
    w = torch.ones(16, device=DEVICE)
    out, res = add_rms_norm_triton(torch.empty(0, 16, device=DEVICE), torch.empty(0, 16, device=DEVICE), w)
    assert out.shape == res.shape == (0, 16)
    x = torch.randn(3, 16, device=DEVICE)
    x[0, 1], x[1, 2] = float("inf"), float("nan")
    check_against_hf(x, torch.randn(3, 16, device=DEVICE), w)


def test_out_overwrites_x():
    """out=x: the result lands in x itself (FlagGems' and vLLM's in-place form)."""
    x = torch.randn(2, 3, 96, device=DEVICE)
    residual = torch.randn(2, 3, 96, device=DEVICE)
    w = torch.randn(96, device=DEVICE)
    want_out, want_res = hf_add_rms_norm(x.clone(), residual.clone(), w, 1e-6)
    out, res = add_rms_norm_triton(x, residual, w, 1e-6, out=x)
    assert out.data_ptr() == x.data_ptr() and out.shape == x.shape
    assert_close(x, want_out)
    assert_close(res, want_res, atol=0)
    separate = torch.empty_like(x)
    assert add_rms_norm_triton(torch.randn_like(x), residual, w, out=separate)[0].data_ptr() == separate.data_ptr()


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_op_out_x_both_backends(backend):
    """The public op takes out= too (validated), so the engine can write the norm into x."""
    x, residual = torch.randn(3, 64, device=DEVICE), torch.randn(3, 64, device=DEVICE)
    w = torch.randn(64, device=DEVICE)
    want_out, want_res = hf_add_rms_norm(x.clone(), residual.clone(), w, 1e-6)
    with use_backend(backend):
        out, res = add_rms_norm(x, residual, w, 1e-6, out=x)
        with pytest.raises(ValueError, match="not be the residual"):
            add_rms_norm(x, residual, w, out=residual)
    assert out.data_ptr() == x.data_ptr() and res is residual
    assert_close(x, want_out)
    assert_close(residual, want_res, atol=0)


@pytest.mark.parametrize("out, match", [(torch.empty(4, 8), "shape"),
                                        (torch.empty(4, 16, dtype=torch.float16), "float32"),
                                        (torch.empty(16, 4).t(), "contiguous: False")])
def test_out_errors(out, match):
    x, residual, w = torch.randn(4, 16), torch.randn(4, 16), torch.randn(16)
    with pytest.raises(ValueError, match=match):
        add_rms_norm_triton(x, residual, w, out=out)


def test_dispatch_reference_and_errors():
    x, r, w = torch.randn(2, 8), torch.randn(2, 8), torch.randn(8)
    r_ref = r.clone()
    with use_backend("reference"):
        out, res = add_rms_norm(x, r, w)
    want_out, want_res = hf_add_rms_norm(x, r_ref, w, 1e-6)
    assert res is r
    assert_close(res, want_res)
    assert_close(out, want_out)
    with pytest.raises(ValueError, match="residual must match"):
        add_rms_norm(x, r[:1], w)
    with pytest.raises(ValueError, match="residual must match"):
        add_rms_norm(x, r.half(), w)
    with pytest.raises(ValueError, match="weight size"):
        add_rms_norm(x, r, torch.randn(7))
    with pytest.raises(ValueError, match="residual must be a torch.Tensor"):
        add_rms_norm(x, None, w)
    with pytest.raises(ValueError, match="eps"):
        add_rms_norm(x, r, w, -1.0)
    with pytest.raises(ValueError, match="last dimension must be <="):
        add_rms_norm(torch.empty(1, 65537), torch.empty(1, 65537), torch.empty(65537))
    assert_close(add_rms_norm_reference(x, r.clone(), w)[0], hf_add_rms_norm(x, r, w, 1e-6)[0])


@pytest.mark.parametrize("dtype", DTYPES)
def test_aten_rms_norm_matches_torch(dtype):
    x = torch.randn(3, 4, 40, dtype=dtype, device=DEVICE)
    w = torch.randn(40, dtype=dtype, device=DEVICE)
    assert "aten::rms_norm" in aten_overrides()
    assert_close(aten_rms_norm(x, [40], w, 1e-5), torch.nn.functional.rms_norm(x, [40], w, 1e-5))
    # default eps, no weight, two normalized dims
    assert_close(aten_rms_norm(x, [4, 40]), torch.nn.functional.rms_norm(x, [4, 40]))
    # small inputs expose the default eps (fp32's for half types too: fp16's would move these by ~20%)
    small = x * 0.01
    assert_close(aten_rms_norm(small, [40]), torch.nn.functional.rms_norm(small, [40]))


def test_aten_rms_norm_fallbacks_and_errors():
    x = torch.randn(2, 8, dtype=torch.float64)
    assert_close(aten_rms_norm(x, [8], None, 1e-6).float(), torch.nn.functional.rms_norm(x, [8], None, 1e-6).float())
    xb, w32 = torch.randn(2, 8, dtype=torch.bfloat16), torch.randn(8)
    got = aten_rms_norm(xb, [8], w32, 1e-6)  # mixed dtypes take ATen's composite formula
    assert got.dtype == torch.float32
    with pytest.raises(ValueError, match="normalized_shape"):
        aten_rms_norm(xb, [7])


@gpu_only
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("rows", [1, 256, 4096, 32768])
def test_qwen3_shapes_gpu(rows, dtype):
    assert ON_GPU
    x, r = (torch.randn(rows, 2560, dtype=dtype, device="cuda") for _ in range(2))
    check_against_hf(x, r, torch.randn(2560, dtype=dtype, device="cuda"))
