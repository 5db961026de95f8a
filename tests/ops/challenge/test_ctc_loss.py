"""ctc_loss: the Triton forward (alpha) and backward (beta, gradient) kernels against aten::_ctc_loss,
_ctc_loss_backward and F.ctc_loss (reductions, zero_infinity, blank index, padded and concatenated
targets, repeated labels, empty targets, impossible alignments, lengths as lists or tensors, dtypes,
layouts, out=, autograd through our ATen overrides, error parity)."""
import math

import pytest
import torch
import torch.nn.functional as F

from flagstack.ops.aten import use_aten
from flagstack.ops.challenge.ctc_loss import ctc_loss_backward_triton, ctc_loss_forward_triton, ctc_loss_triton
from tests.ops.challenge.common import check, covers, large_only_on_gpu, same_error
from tests.ops.helpers import ATOL, DEVICE, ON_GPU, assert_close

aten = torch.ops.aten


def problem(steps, batch, classes, length, blank=0, dtype=torch.float32, repeats=True):
    """Random log-softmax inputs and padded targets (no blank in them); a repeated label in sequence 0."""
    log_probs = torch.randn(steps, batch, classes, device=DEVICE, dtype=torch.float64).log_softmax(-1).to(dtype)
    labels = torch.randint(1, classes, (batch, length), device=DEVICE)
    targets = (blank + labels) % classes  # any label but the blank
    if repeats and length > 1:
        targets[0, 1] = targets[0, 0]
    return log_probs, targets


def check_forward_backward(log_probs, targets, input_lengths, target_lengths, blank=0, zero_infinity=False):
    """nll, log_alpha (where defined: t < T_n, s < 2 S_n + 1) and the gradient against ATen."""
    nll, alpha = ctc_loss_forward_triton(log_probs, targets, input_lengths, target_lengths, blank, zero_infinity)
    ref_nll, ref_alpha = aten._ctc_loss(log_probs, targets, input_lengths, target_lengths, blank, zero_infinity)
    check(nll, ref_nll)
    assert alpha.shape == ref_alpha.shape
    for n, (steps, length) in enumerate(zip(torch.as_tensor(input_lengths).tolist(),
                                            torch.as_tensor(target_lengths).tolist())):
        check(alpha[n, :steps, :2 * length + 1], ref_alpha[n, :steps, :2 * length + 1])
    grad_nll = torch.rand(log_probs.shape[1], device=DEVICE, dtype=log_probs.dtype) + 0.5
    grad = ctc_loss_backward_triton(grad_nll, log_probs, targets, input_lengths, target_lengths, nll, alpha, blank,
                                    zero_infinity)
    # The gradient's posterior term is exp(alpha + beta + nll - lp), an exponent that cancels terms as large as
    # the nll: an fp32 gradient is only good to about eps * |nll|. ATen's own fp32 gradient is 3.4-4.5 such
    # units off its fp64 one (T200 N32 C64 S50 and T500 N8 C1000 S120 on CPU, 3 seeds each: up to 1.7e-3 at
    # |nll| ~ 3200), so two fp32 implementations may differ by twice that: atol max(ATOL, 8 eps |nll|). Small
    # problems (|nll| < ~100) keep the plain ATOL.
    finite_nll = ref_nll[ref_nll.isfinite()].abs()
    scale = 8 * torch.finfo(log_probs.dtype).eps * (finite_nll.max().item() if finite_nll.numel() else 0.0)
    ref_grad = aten._ctc_loss_backward(grad_nll, log_probs, targets, input_lengths, target_lengths, ref_nll,
                                       ref_alpha, blank, zero_infinity)
    assert_close(grad, ref_grad, reduce_dim=max(1, math.ceil(scale / ATOL)))
    return nll, grad


@covers("small", "params")
@pytest.mark.parametrize("blank", [0, 3])
def test_small(blank):
    log_probs, targets = problem(9, 3, 5, 3, blank)
    check_forward_backward(log_probs, targets, [9, 7, 4], [3, 2, 1], blank)


@covers("regular", "params")
def test_regular_concatenated_targets():
    """Lengths as tensors on the device (the .Tensor overloads) and as lists (the int[] ones); ATen's .Tensor
    overloads want the lengths on log_probs' device (CPU lengths with CUDA log_probs raise), ours too."""
    log_probs, targets = problem(30, 2, 20, 8)
    flat = torch.cat([targets[0, :8], targets[1, :5]])
    check_forward_backward(log_probs, flat, torch.tensor([30, 22], device=DEVICE), torch.tensor([8, 5], device=DEVICE))
    check_forward_backward(log_probs, flat, [30, 22], [8, 5])
    if ON_GPU:
        cpu_lengths = torch.tensor([30, 22]), torch.tensor([8, 5])
        same_error(lambda: ctc_loss_forward_triton(log_probs, flat, *cpu_lengths),
                   lambda: aten._ctc_loss(log_probs, flat, *cpu_lengths))
        check(ctc_loss_triton(log_probs, flat, *cpu_lengths), F.ctc_loss(log_probs, flat, *cpu_lengths))


@covers("large")
@large_only_on_gpu
@pytest.mark.parametrize("steps,batch,classes,length", [(200, 32, 64, 50), (500, 8, 1000, 120)] if ON_GPU else [])
def test_large(steps, batch, classes, length):
    log_probs, targets = problem(steps, batch, classes, length)
    input_lengths = torch.randint(steps // 2, steps + 1, (batch,), device=DEVICE)
    target_lengths = torch.randint(length // 2, length + 1, (batch,), device=DEVICE)
    check_forward_backward(log_probs, targets, input_lengths, target_lengths)


@covers("params", "empty", "nonfinite")
@pytest.mark.parametrize("zero_infinity", [False, True])
def test_edge_alignments(zero_infinity):
    """Empty targets (only blanks), no time at all, targets longer than the input (inf loss: NaN
    gradients, or zeros with zero_infinity) and a full-length repeated-label target."""
    log_probs, targets = problem(6, 4, 4, 3)
    targets[3] = targets[3, 0]  # a a a needs 5 steps (a blank between repeats)
    nll, _ = check_forward_backward(log_probs, targets, [6, 0, 2, 4], [0, 0, 3, 3], zero_infinity=zero_infinity)
    assert nll[1].item() == 0 and nll[1].signbit() and nll[2].isinf() and nll[3].isinf()


@covers("float_dtypes", "errors")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_dtypes(dtype):
    log_probs, targets = problem(7, 2, 5, 2, dtype=dtype if dtype == torch.float64 else torch.float32)
    if dtype == torch.float64:
        check_forward_backward(log_probs, targets.int(), [7, 5], [2, 2])
    else:  # ATen has no fp16/bf16 CTC kernel
        half = log_probs.to(dtype)
        same_error(lambda: ctc_loss_forward_triton(half, targets, [7, 5], [2, 2]),
                   lambda: aten._ctc_loss(half, targets, [7, 5], [2, 2]))


@covers("nonfinite")
def test_nonfinite_log_probs():
    """A class with log-probability -inf (probability 0) at some steps, and a NaN that poisons one sequence."""
    log_probs, targets = problem(8, 2, 5, 2)
    log_probs[2, 0, 4] = float("-inf")
    log_probs[3, 1, 2] = float("nan")
    check_forward_backward(log_probs, targets, [8, 8], [2, 2])


@covers("noncontiguous")
def test_noncontiguous():
    log_probs, targets = problem(8, 3, 6, 3)
    batch_first = log_probs.transpose(0, 1).contiguous().transpose(0, 1)
    strided_targets = torch.stack([targets, targets], -1)[..., 0]
    check_forward_backward(batch_first, strided_targets, [8, 6, 5], [3, 2, 2])
    check_forward_backward(torch.cat([log_probs, log_probs], -1)[..., ::2], targets, [8, 6, 5], [3, 2, 2])


@covers("params")
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_reductions(reduction):
    log_probs, targets = problem(8, 3, 5, 3)
    args = (log_probs, targets, [8, 2, 6], [3, 3, 0])
    for zero_infinity in (False, True):
        check(ctc_loss_triton(*args, 0, reduction, zero_infinity), F.ctc_loss(*args, 0, reduction, zero_infinity))
    unbatched = (log_probs[:, 0], targets[0], (8,), (3,))
    check(ctc_loss_triton(*unbatched, reduction=reduction), F.ctc_loss(*unbatched, reduction=reduction))


@covers("params")
def test_autograd_through_aten_overrides():
    """F.ctc_loss forward and backward with our _ctc_loss / _ctc_loss_backward installed (CPU key)."""
    log_probs, targets = problem(8, 2, 5, 3)
    results = []
    for ours in (True, False):
        x = log_probs.clone().requires_grad_()
        with use_aten(DEVICE.upper(), only=["aten::_ctc_loss", "aten::_ctc_loss_backward"]) if ours \
                else torch.enable_grad():
            loss = F.ctc_loss(x, targets, [8, 6], [3, 2], reduction="mean")
            loss.backward()
        results.append((loss.detach(), x.grad))
    for got, want in zip(*results):
        check(got, want)


@covers("out")
def test_out():
    log_probs, targets = problem(6, 2, 4, 2)
    out0, out1 = torch.empty(0, device=DEVICE), torch.empty(0, device=DEVICE)
    nll, alpha = ctc_loss_forward_triton(log_probs, targets, [6, 5], [2, 1], out0=out0, out1=out1)
    assert nll is out0 and alpha is out1
    ref_nll, ref_alpha = aten._ctc_loss(log_probs, targets, [6, 5], [2, 1])
    check(nll, ref_nll)
    grad_out = torch.empty(6, 2, 4, device=DEVICE).transpose(0, 1).contiguous().transpose(0, 1)
    grad_nll = torch.ones(2, device=DEVICE)
    assert ctc_loss_backward_triton(grad_nll, log_probs, targets, [6, 5], [2, 1], nll, alpha, 0, out=grad_out) \
        is grad_out
    check(grad_out, aten._ctc_loss_backward(grad_nll, log_probs, targets, [6, 5], [2, 1], ref_nll, ref_alpha, 0))
    half = torch.empty(0, dtype=torch.float64, device=DEVICE)
    same_error(lambda: ctc_loss_forward_triton(log_probs, targets, [6, 5], [2, 1], out0=half, out1=half.clone()),
               lambda: aten._ctc_loss.out(log_probs, targets, [6, 5], [2, 1], out0=half.clone(), out1=half.clone()))


@covers("errors", "int_dtypes", "ranks")
def test_errors():
    log_probs, targets = problem(6, 2, 5, 3)
    lengths = ([6, 4], [3, 2])
    bad = [(log_probs, targets.float(), *lengths), (log_probs[:, 0], targets, *lengths),
           (log_probs, targets, [7, 4], [3, 2]), (log_probs, targets, [6], [3, 2]), (log_probs, targets, [6, 4], [3]),
           (log_probs, targets, [6, 4], [4, 2]), (log_probs, targets, [-1, 4], [3, 2]),
           (log_probs, targets, [6, 4], [-1, 2]), (log_probs, targets.flatten(), *lengths),
           (log_probs, targets, torch.tensor([6.0, 4.0]), torch.tensor([3, 2])),
           (log_probs[:, :0], targets[:0], [], []),
           (log_probs.to(torch.int64), targets, *lengths)]
    for args in bad:
        same_error(lambda: ctc_loss_forward_triton(*args), lambda: aten._ctc_loss(*args))
    for blank in (5, -1):
        same_error(lambda: ctc_loss_forward_triton(log_probs, targets, *lengths, blank),
                   lambda: aten._ctc_loss(log_probs, targets, *lengths, blank))
    with pytest.raises(ValueError):
        ctc_loss_triton(log_probs, targets, *lengths, reduction="avg")
