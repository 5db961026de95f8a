"""svd: the batched one-sided Jacobi kernel against torch.linalg (singular values against fp64 svdvals;
U and Vh, whose signs are not unique, through reconstruction and orthonormality), tall / wide / square,
full_matrices, compute_uv, rank-deficient and repeated singular values, dtypes, layouts, empty inputs,
non-finite inputs, out=, autograd through our aten::_linalg_svd override, error parity."""
import pytest
import torch

from flagstack.ops.aten import use_aten
from flagstack.ops.challenge.svd import svd_triton
from flagstack.ops.registry import aten_overrides
from tests.ops.challenge.common import check, covers, large_only_on_gpu, same_error
from tests.ops.helpers import DEVICE, ON_GPU, assert_close

aten = torch.ops.aten


def check_svd(A, full_matrices=True, compute_uv=True, result=None):
    """Shapes as ATen's; S against fp64 svdvals; U S Vh = A; U and Vh orthonormal."""
    U, S, Vh = result or svd_triton(A, full_matrices, compute_uv)
    ref_U, ref_S, ref_Vh = aten._linalg_svd(A, full_matrices, compute_uv)
    assert (U.shape, S.shape, Vh.shape) == (ref_U.shape, ref_S.shape, ref_Vh.shape)
    # Errors scale with |A|_2 = max S (Weyl: |dS| <= |dA|_2), so S is compared relative to it, as the
    # reconstruction is. Our fp32 Jacobi (~500 rotations a column at 64x64) is off fp64 by ~6e-6 |A|_2,
    # ATen's LAPACK by ~7e-7 |A|_2 (8 random 64x64 on CPU): absolute 1.2e-4 at S ~ 15 on the H100.
    scale = max(1.0, S.abs().max().item()) if S.numel() else 1.0
    assert_close(S / scale, torch.linalg.svdvals(A.double()).to(A.dtype) / scale)
    if compute_uv:
        k = S.shape[-1]
        assert_close(((U[..., :k] * S[..., None, :]) @ Vh[..., :k, :]) / scale, A / scale)
        for Q in (U, Vh.mT):
            assert_close(Q.mT @ Q, torch.eye(Q.shape[-1], dtype=A.dtype, device=DEVICE).expand(Q.mT.shape[:-1] +
                                                                                             (Q.shape[-1],)))
    return U, S, Vh


@covers("small", "ranks", "params")
@pytest.mark.parametrize("shape,full_matrices", [((3, 4, 4), True), ((2, 5, 3), True), ((2, 3, 5), False),
                                                 ((1, 1), True), ((2, 2, 6, 1), True), ((2, 1, 5), True)])
def test_shapes(shape, full_matrices):
    check_svd(torch.randn(shape, device=DEVICE), full_matrices)


@covers("regular")
def test_regular():
    check_svd(torch.randn(2, 12, 10, device=DEVICE), full_matrices=False)


@covers("large")
@large_only_on_gpu
@pytest.mark.parametrize("shape", [(512, 32, 32), (64, 64, 64), (100, 20, 50), (7, 64, 3)] if ON_GPU else [])
def test_large(shape):
    check_svd(torch.randn(shape, device=DEVICE), full_matrices=True)


@covers("params")
def test_rank_deficient_and_repeated():
    """Singular values (3, 3, 0, 0) of a 5x4: U's columns for the zero ones and the fifth come from the
    completion; they must still be orthonormal."""
    Q1, _ = torch.linalg.qr(torch.randn(5, 5, dtype=torch.float64))
    Q2, _ = torch.linalg.qr(torch.randn(4, 4, dtype=torch.float64))
    A = (Q1[:, :4] * torch.tensor([3.0, 3.0, 0.0, 0.0], dtype=torch.float64)) @ Q2.mT
    _, S, _ = check_svd(A.float().to(DEVICE).unsqueeze(0))
    assert (S[0, 2:] < 1e-5).all()


@covers("params")
def test_completion_of_a_spread_direction():
    """Full U of a rank-15 16x15 A whose missing direction is (1, ..., 1) / 4: every e_i keeps only 0.25 of
    it after the 15 found columns, so a completion that wants more than 1/sqrt(M) of e_i left a zero column."""
    w = torch.full((16, 1), 0.25, device=DEVICE)
    A = (torch.eye(16, device=DEVICE) - w @ w.T) @ torch.randn(16, 15, device=DEVICE)
    U, _, _ = check_svd(A.unsqueeze(0))
    torch.testing.assert_close(U[0, :, -1].abs(), w[:, 0], rtol=0, atol=1e-5)


@covers("params")
def test_values_only():
    A = torch.randn(3, 6, 4, device=DEVICE)
    U, S, Vh = aten_overrides()["aten::_linalg_svd"](A, False, False)
    assert U.numel() == 0 and Vh.numel() == 0
    check_svd(A, False, False, result=(U, S, Vh))


@covers("float_dtypes", "errors")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_dtypes(dtype):
    A = torch.randn(2, 5, 4, device=DEVICE).to(dtype)
    if dtype == torch.float64:
        check_svd(A)
    else:  # ATen has no half-precision SVD
        same_error(lambda: svd_triton(A), lambda: aten._linalg_svd(A))


@covers("int_dtypes", "errors")
def test_integer_input():
    A = torch.randint(0, 5, (3, 3), device=DEVICE)
    same_error(lambda: svd_triton(A), lambda: aten._linalg_svd(A))


@covers("empty")
@pytest.mark.parametrize("shape", [(0, 3, 4), (3, 0), (0, 4)])
def test_empty(shape):
    check_svd(torch.empty(shape, device=DEVICE), full_matrices=True)


@covers("nonfinite", "errors")
def test_nonfinite():
    """NaN input raises LinAlgError (ATen's CPU check); an infinite entry gives non-finite singular
    values for its matrix only, as ATen's."""
    A = torch.randn(2, 3, 3, device=DEVICE)
    A[1, 0, 2] = float("nan")
    same_error(lambda: svd_triton(A), lambda: aten._linalg_svd(A.cpu()))
    A[1, 0, 2] = float("inf")
    U, S, Vh = svd_triton(A)
    check_svd(A[:1], result=(U[:1], S[:1], Vh[:1]))
    assert not S[1].isfinite().all() and not aten._linalg_svd(A.cpu())[1][1].isfinite().all()


@covers("noncontiguous")
def test_noncontiguous():
    base = torch.randn(3, 6, 8, device=DEVICE)
    check_svd(base.mT[:, ::2])  # 4x6 views with transposed strides


@covers("out", "errors")
def test_out():
    A = torch.randn(2, 5, 3, device=DEVICE)
    outs = {name: torch.empty(0, device=DEVICE) for name in ("U", "S", "Vh")}
    result = aten_overrides()["aten::_linalg_svd.U"](A, True, True, **outs)
    assert all(got is outs[name] for got, name in zip(result, ("U", "S", "Vh")))
    check_svd(A, True, True, result=result)
    bad = {name: torch.empty(0, dtype=torch.float64, device=DEVICE) for name in ("U", "S", "Vh")}
    same_error(lambda: svd_triton(A, U=bad["U"], S=bad["S"], Vh=bad["Vh"]),
               lambda: aten._linalg_svd.U(A, U=bad["U"].clone(), S=bad["S"].clone(), Vh=bad["Vh"].clone()))


@covers("params")
def test_linalg_svd_and_autograd_through_aten_override():
    """torch.linalg.svd with our kernel installed; the gradient of sum(S) (U V^T, sign-free) as ATen's."""
    A = torch.randn(4, 3, device=DEVICE, dtype=torch.float64)
    grads = []
    for ours in (True, False):
        x = A.clone().requires_grad_()
        with use_aten(DEVICE.upper(), only=["aten::_linalg_svd"]) if ours else torch.enable_grad():
            U, S, Vh = torch.linalg.svd(x, full_matrices=False)
            S.sum().backward()
        grads.append(x.grad)
        if ours:
            check_svd(A, False, True, result=(U.detach(), S.detach(), Vh.detach()))
    check(*grads)


@covers("errors")
def test_errors():
    same_error(lambda: svd_triton(torch.randn(5, device=DEVICE)), lambda: aten._linalg_svd(torch.randn(5)))
    with pytest.raises(ValueError):  # beyond the register-resident kernel (the ATen override falls back)
        svd_triton(torch.randn(2, 65, 3, device=DEVICE))
    assert aten_overrides()["aten::_linalg_svd"](torch.randn(65, 3, device=DEVICE)) is NotImplemented
