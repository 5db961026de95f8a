"""ctc_loss (F.ctc_loss): connectionist temporal classification loss by the log-space forward-backward
algorithm, with blank index, reductions none / mean / sum, zero_infinity, padded (2-D) or concatenated
(1-D) targets, and its gradient (aten::_ctc_loss[.Tensor][.out][.Tensor_out], _ctc_loss_backward[.Tensor]
[.out]; F.ctc_loss's autograd runs through these two).

For target l (length S) the extended target l' = (blank, l1, blank, l2, ..., blank) has L = 2S + 1 states.
Forward, alpha[t, s] = lp[t, l'_s] + logsumexp(alpha[t-1, s], alpha[t-1, s-1], alpha[t-1, s-2] when
l'_s is a label different from l'_{s-2}); nll = -logsumexp(alpha[T-1, L-1], alpha[T-1, L-2]). Backward,
beta mirrors alpha from the end, and grad[t, c] = (exp(lp[t, c]) - sum_{s: l'_s = c} exp(alpha[t, s] +
beta[t, s] + nll - lp[t, c])) * grad_nll: the softmax minus the posterior of c at t (beta counts lp[t, l'_s]
as alpha does, as ATen's, hence - lp).

One program per sequence walks t in order with the states in registers and writes one alpha row per step,
which the backward reads back. Work is T sequential steps per sequence, so it is latency-bound (T200 N32 S50
is 200 dependent steps) and the forward holds the states in pairs (blank 2j, label 2j + 1): one tl.gather
per step instead of two, and log-probs loaded a group of 4 steps ahead. On the H100 (scripts/ctc_probe.py)
that took the kernel from 133 to 108 us on the core shape (torch's 105 us). The backward walks beta in
state form. The host reads the lengths once (a sync when they are device tensors, as in ATen) and otherwise
uses the caller's device tensors as they are: every host-to-device copy of a small tensor was another sync.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from flagstack.ops.challenge.pointwise import check_kernel_dtype, check_same_dtype, resize_out
from flagstack.ops.host import next_power_of_2
from flagstack.ops.registry import BenchCase, register, register_aten

DTYPES = (torch.float32, torch.float64)  # as ATen
REDUCTIONS = {"none": 0, "mean": 1, "sum": 2}  # ATen's Reduction enum
BLOCK_C = 256  # classes per step of the gradient's row loop


@triton.jit
def _logsumexp3(a, b, c):
    """log(e^a + e^b + e^c), -inf when all are -inf (ATen's guard against inf - inf)."""
    top = tl.maximum(a, tl.maximum(b, c))
    top = tl.where(top == float("-inf"), 0.0, top)
    return top + tl.log(tl.exp(a - top) + tl.exp(b - top) + tl.exp(c - top))


@triton.jit
def _extended_target(targets_ptr, target_start, target_stride, target_len, blank, BLOCK_L: tl.constexpr):
    """States s of l': their labels, which exist (s < 2S + 1), and which may skip from s - 2."""
    s = tl.arange(0, BLOCK_L)
    live = s < 2 * target_len + 1
    is_label = (s % 2) == 1
    label = tl.load(targets_ptr + target_start + (s // 2) * target_stride, mask=live & is_label, other=0)
    label = tl.where(is_label, label.to(tl.int64), blank)
    before = tl.load(targets_ptr + target_start + (s // 2 - 1) * target_stride, mask=live & is_label & (s >= 3),
                     other=0).to(tl.int64)
    can_skip = is_label & (s >= 3) & (label != before)
    return s, live, label, can_skip


@triton.jit
def _target_start(target_start_ptr, n, row_stride, PADDED: tl.constexpr):
    """Offset of sequence n's first label: row n of padded targets, or its start in concatenated ones."""
    # Both returns are compiled even when PADDED holds, the second reading int32 targets in that case; compiled
    # Triton (not the interpreter) wants one return type: int64 for both.
    if PADDED:
        return n.to(tl.int64) * row_stride
    return tl.load(target_start_ptr + n).to(tl.int64)


@triton.jit
def _shift(x, by: tl.constexpr, s, BLOCK_L: tl.constexpr):
    """x[s - by] (by = +-1, +-2), -inf where that is outside the block."""
    source = s - by
    inside = (source >= 0) & (source < BLOCK_L)
    return tl.where(inside, tl.gather(x, tl.where(inside, source, 0), axis=0), float("-inf"))


@triton.jit
def _logsumexp2(a, b):
    """log(e^a + e^b), -inf when both are -inf."""
    top = tl.maximum(a, b)
    top = tl.where(top == float("-inf"), 0.0, top)
    return top + tl.log(tl.exp(a - top) + tl.exp(b - top))


@triton.jit
def _alpha_step(blank, label, lp_blank, lp_label, t, steps, can_skip, blank_live, label_live, j, width, row_at, a_st,
                BLOCK_J: tl.constexpr):
    """alpha[t] from alpha[t - 1] in pair form (blank state 2j, label state 2j + 1), stored; unchanged past
    the sequence's end. A blank comes from itself or the label before it; a label from itself, the blank
    before it, or the label before that one when it differs."""
    label_before = _shift(label, 1, j, BLOCK_J)
    new_blank = tl.where(blank_live, lp_blank + _logsumexp2(blank, label_before), float("-inf"))
    new_label = tl.where(label_live, lp_label + _logsumexp3(label, blank, tl.where(can_skip, label_before,
                                                                                     float("-inf"))), float("-inf"))
    now = t < steps
    tl.store(row_at + t * a_st, new_blank, mask=now & (2 * j < width))
    tl.store(row_at + t * a_st + 1, new_label, mask=now & (2 * j + 1 < width))
    return tl.where(now, new_blank, blank), tl.where(now, new_label, label)


@triton.jit
def _alpha_kernel(lp_ptr, targets_ptr, target_start_ptr, input_len_ptr, target_len_ptr, nll_ptr, alpha_ptr,
                  blank_class, width, lp_st, lp_sn, lp_sc, target_row_stride, target_stride, a_sn, a_st,
                  PADDED: tl.constexpr, BLOCK_J: tl.constexpr):
    # The L = 2S + 1 states as S + 1 blanks and S labels, pair j holding states 2j and 2j + 1: all blanks
    # read one log-prob (a scalar load), and the one neighbour a step needs from another lane is the label
    # of pair j - 1 (one tl.gather, where state form needs two).
    n = tl.program_id(0)
    steps = tl.load(input_len_ptr + n)
    target_len = tl.load(target_len_ptr + n)
    target_at = targets_ptr + _target_start(target_start_ptr, n, target_row_stride, PADDED)
    j = tl.arange(0, BLOCK_J)
    blank_live, label_live = j <= target_len, j < target_len
    label = tl.load(target_at + j * target_stride, mask=label_live, other=0).to(tl.int64)
    before = tl.load(target_at + (j - 1) * target_stride, mask=label_live & (j >= 1), other=0).to(tl.int64)
    can_skip = label_live & (j >= 1) & (label != before)
    blank_at = lp_ptr + n.to(tl.int64) * lp_sn + blank_class * lp_sc
    label_at = lp_ptr + n.to(tl.int64) * lp_sn + label * lp_sc
    row_at = alpha_ptr + n.to(tl.int64) * a_sn + 2 * j
    # t = 0: paths start on the first blank or the first label
    alpha_blank = tl.where((j == 0) & (steps > 0), tl.load(blank_at), float("-inf"))
    alpha_label = tl.where((j == 0) & label_live & (steps > 0), tl.load(label_at, mask=label_live, other=0.0),
                           float("-inf"))
    tl.store(row_at, alpha_blank, mask=2 * j < width)
    tl.store(row_at + 1, alpha_label, mask=2 * j + 1 < width)
    # Steps go in groups of 4 with the next group's log-probs loaded first: a load then has 4 steps of math
    # (~0.1 us each) to arrive, where one step ahead waited on nearly every load (HBM latency ~1 us).
    b0, l0 = tl.load(blank_at + lp_st, mask=steps > 1), tl.load(label_at + lp_st, mask=label_live & (steps > 1))
    b1, l1 = tl.load(blank_at + 2 * lp_st, mask=steps > 2), tl.load(label_at + 2 * lp_st, mask=label_live & (steps > 2))
    b2, l2 = tl.load(blank_at + 3 * lp_st, mask=steps > 3), tl.load(label_at + 3 * lp_st, mask=label_live & (steps > 3))
    b3, l3 = tl.load(blank_at + 4 * lp_st, mask=steps > 4), tl.load(label_at + 4 * lp_st, mask=label_live & (steps > 4))
    for t in range(1, steps, 4):
        at = t + 4
        nb0, nl0 = tl.load(blank_at + at * lp_st, mask=at < steps), tl.load(label_at + at * lp_st,
                                                                           mask=label_live & (at < steps))
        nb1, nl1 = tl.load(blank_at + (at + 1) * lp_st, mask=at + 1 < steps), tl.load(
            label_at + (at + 1) * lp_st, mask=label_live & (at + 1 < steps))
        nb2, nl2 = tl.load(blank_at + (at + 2) * lp_st, mask=at + 2 < steps), tl.load(
            label_at + (at + 2) * lp_st, mask=label_live & (at + 2 < steps))
        nb3, nl3 = tl.load(blank_at + (at + 3) * lp_st, mask=at + 3 < steps), tl.load(
            label_at + (at + 3) * lp_st, mask=label_live & (at + 3 < steps))
        alpha_blank, alpha_label = _alpha_step(alpha_blank, alpha_label, b0, l0, t, steps, can_skip, blank_live,
                                               label_live, j, width, row_at, a_st, BLOCK_J)
        alpha_blank, alpha_label = _alpha_step(alpha_blank, alpha_label, b1, l1, t + 1, steps, can_skip, blank_live,
                                               label_live, j, width, row_at, a_st, BLOCK_J)
        alpha_blank, alpha_label = _alpha_step(alpha_blank, alpha_label, b2, l2, t + 2, steps, can_skip, blank_live,
                                               label_live, j, width, row_at, a_st, BLOCK_J)
        alpha_blank, alpha_label = _alpha_step(alpha_blank, alpha_label, b3, l3, t + 3, steps, can_skip, blank_live,
                                               label_live, j, width, row_at, a_st, BLOCK_J)
        b0, l0, b1, l1, b2, l2, b3, l3 = nb0, nl0, nb1, nl1, nb2, nl2, nb3, nl3
    # paths end on the final blank or the last label (sums pick one element and, unlike max, keep NaN)
    last = tl.sum(tl.where(j == target_len, alpha_blank, 0.0), axis=0)
    label_last = tl.where(target_len > 0, tl.sum(tl.where(j == target_len - 1, alpha_label, 0.0), axis=0),
                          float("-inf"))
    log_likelihood = _logsumexp2(last, label_last)
    log_likelihood = tl.where(steps == 0, tl.where(target_len == 0, 0.0, float("-inf")), log_likelihood)
    tl.store(nll_ptr + n, log_likelihood * -1.0)  # -0.0 for an empty target in no time, as ATen


@triton.jit
def _gradient_kernel(grad_out_ptr, lp_ptr, targets_ptr, target_start_ptr, input_len_ptr, target_len_ptr, nll_ptr,
                     alpha_ptr, grad_ptr, blank, max_steps, classes, zero_infinity, go_s, nll_s,
                     lp_st, lp_sn, lp_sc, target_row_stride, target_stride, a_sn, a_st, a_ss, g_st, g_sn, g_sc,
                     PADDED: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_C: tl.constexpr):
    n = tl.program_id(0)
    steps = tl.load(input_len_ptr + n)
    target_len = tl.load(target_len_ptr + n)
    target_start = _target_start(target_start_ptr, n, target_row_stride, PADDED)
    s, live, label, _ = _extended_target(targets_ptr, target_start, target_stride, target_len, blank, BLOCK_L)
    has_next_label = ((s % 2) == 1) & (s + 2 < 2 * target_len + 1)
    after = tl.load(targets_ptr + target_start + (s // 2 + 1) * target_stride, mask=has_next_label, other=0)
    skip_from_next = has_next_label & (label != after.to(tl.int64))  # state s + 2 may come from s
    nll = tl.load(nll_ptr + n * nll_s)
    scale = tl.load(grad_out_ptr + n * go_s)
    # An impossible alignment (nll = inf) or a NaN nll gives NaN gradients in every class, as ATen's
    # (its nll enters each term); zero_infinity zeroes the impossible ones.
    zeroed = (nll == float("inf")) & (zero_infinity != 0)
    scale = tl.where((nll == float("inf")) | (nll != nll), float("nan"), scale)
    lp_row = lp_ptr + n.to(tl.int64) * lp_sn
    alpha_row = alpha_ptr + n.to(tl.int64) * a_sn + s * a_ss
    grad_row = grad_ptr + n.to(tl.int64) * g_sn
    c = tl.arange(0, BLOCK_C)
    beta = tl.full([BLOCK_L], float("-inf"), nll.dtype)
    for step in range(0, max_steps):
        t = max_steps - 1 - step
        if t < steps:
            lp_t = tl.load(lp_row + t * lp_st + label * lp_sc, mask=live, other=float("-inf"))
            if t == steps - 1:
                beta = tl.where(live & (s >= 2 * target_len - 1), lp_t, float("-inf"))
            else:
                paths = _logsumexp3(beta, _shift(beta, -1, s, BLOCK_L),
                                    tl.where(skip_from_next, _shift(beta, -2, s, BLOCK_L), float("-inf")))
                beta = tl.where(live, lp_t + paths, float("-inf"))
            alpha = tl.load(alpha_row + t * a_st, mask=live, other=float("-inf"))
            # the posterior of state s at t: beta counts lp_t as alpha does, so it is taken out once
            occupancy = tl.where(live, tl.exp(alpha + beta + nll - lp_t), 0.0)
            for c_start in range(0, classes, BLOCK_C):
                cls = c_start + c
                lp_c = tl.load(lp_row + t * lp_st + cls * lp_sc, mask=cls < classes, other=0.0)
                mass = tl.sum(tl.where(label[:, None] == cls[None, :], occupancy[:, None], 0.0), axis=0)
                grad = (tl.exp(lp_c) - mass) * scale
                # ATen's exp(lcab + nll - lp) is inf - inf = NaN where lp = -inf (probability 0): kept
                grad = tl.where(zeroed, 0.0, tl.where(lp_c == float("-inf"), float("nan"), grad))
                tl.store(grad_row + t * g_st + cls * g_sc, grad, mask=cls < classes)
        else:  # past this sequence's end: no gradient
            for c_start in range(0, classes, BLOCK_C):
                cls = c_start + c
                tl.store(grad_row + t * g_st + cls * g_sc, tl.zeros([BLOCK_C], nll.dtype), mask=cls < classes)


def _length_values(input_lengths, target_lengths) -> tuple[list[int], list[int]]:
    """Both lengths as int lists, given as lists (the IntList overloads) or integer tensors (.Tensor ones);
    two tensors on one GPU come back in one transfer (each transfer waits for the GPU's queue)."""
    given = {"input_lengths": input_lengths, "target_lengths": target_lengths}
    for name, lengths in given.items():
        if isinstance(lengths, torch.Tensor) and (lengths.dtype.is_floating_point or lengths.dtype.is_complex
                                                  or lengths.dtype == torch.bool):
            raise RuntimeError(f"{name} must be integral")
    if all(isinstance(v, torch.Tensor) and v.device.type != "cpu" for v in given.values()) and \
            input_lengths.device == target_lengths.device:
        both = torch.cat([input_lengths.reshape(-1), target_lengths.reshape(-1)]).tolist()
        return both[:input_lengths.numel()], both[input_lengths.numel():]
    return tuple([int(v) for v in (lengths.reshape(-1).tolist() if isinstance(lengths, torch.Tensor) else lengths)]
                 for lengths in given.values())


def _check(log_probs: torch.Tensor, targets: torch.Tensor, input_lengths: list[int], target_lengths: list[int],
           blank: int) -> None:
    """ATen's ctc_loss checks (RuntimeError), then the dtypes our kernels take (NotImplementedError)."""
    if targets.dtype not in (torch.int32, torch.int64):
        raise RuntimeError(f"Expected tensor for argument #2 'targets' to have scalar type Int or Long; but got "
                           f"{targets.dtype} instead")
    if log_probs.dim() != 3:
        raise RuntimeError(f"Expected 3-dimensional tensor, but got {log_probs.dim()}-dimensional tensor for "
                           f"argument #1 'log_probs'")
    steps, batch, classes = log_probs.shape
    if log_probs.numel() == 0:
        raise RuntimeError("log_probs tensor must not be empty")
    if not 0 <= blank < classes:
        raise RuntimeError("blank must be in label range")
    if len(input_lengths) != batch:
        raise RuntimeError("input_lengths must be of size batch_size")
    if len(target_lengths) != batch:
        raise RuntimeError("target_lengths must be of size batch_size")
    if targets.dim() == 1:
        if targets.shape[0] != sum(target_lengths):
            raise RuntimeError(f"Expected tensor to have size {sum(target_lengths)} at dimension 0, but got size "
                               f"{targets.shape[0]} for argument #2 'targets'")
    elif targets.dim() != 2 or targets.shape[0] != batch or targets.shape[1] < max(target_lengths):
        raise RuntimeError(f"Expected targets of shape [batch_size ({batch}), at least {max(target_lengths)}] or "
                           f"concatenated 1-D, got {list(targets.shape)}")
    for name, lengths, most in (("input_lengths", input_lengths, steps), ("target_lengths", target_lengths, None)):
        if min(lengths) < 0:
            raise RuntimeError(f"Expected {name} to have value at least 0, but got value {min(lengths)}")
        if most is not None and max(lengths) > most:
            raise RuntimeError(f"Expected {name} to have value at most {most}, but got value {max(lengths)}")
    check_kernel_dtype("ctc_loss", log_probs.dtype, DTYPES, log_probs.device)


def _target_layout(targets: torch.Tensor, target_lengths: list[int]) -> tuple[torch.Tensor | None, int, int]:
    """(where each sequence's target starts in concatenated targets, else None, the stride between padded rows,
    the stride between labels): padded rows' starts are computed in the kernels, at no launch here."""
    if targets.dim() == 1:
        starts = [0]
        for length in target_lengths[:-1]:
            starts.append(starts[-1] + length)
        return torch.tensor(starts, device=targets.device) * targets.stride(0), 0, targets.stride(0)
    return None, targets.stride(0), targets.stride(1)


def _check_length_devices(log_probs: torch.Tensor, *lengths) -> None:
    """ATen's .Tensor overloads want length tensors on log_probs' device (F.ctc_loss moves them itself)."""
    for name, given in zip(("input_lengths", "target_lengths"), lengths):
        if isinstance(given, torch.Tensor) and given.device != log_probs.device:
            raise RuntimeError(f"Expected all tensors to be on the same device, but got {name} is on "
                               f"{given.device}, different from other tensors on {log_probs.device}")


def _device_lengths(given, values: list[int], device: torch.device) -> torch.Tensor:
    """The lengths as int64 on `device`: the caller's tensor when it is there already (no copy, no sync)."""
    if isinstance(given, torch.Tensor) and given.device == device:
        return given.reshape(-1).to(torch.int64)
    return torch.tensor(values, device=device)


def _prepare(log_probs, targets, input_lengths, target_lengths, blank):
    """Checked lengths and the per-sequence tensors both kernels take."""
    in_values, tg_values = _length_values(input_lengths, target_lengths)
    _check(log_probs, targets, in_values, tg_values, blank)
    device = log_probs.device
    targets = targets.to(device)
    starts, row_stride, target_stride = _target_layout(targets, tg_values)
    return (targets, starts, _device_lengths(input_lengths, in_values, device),
            _device_lengths(target_lengths, tg_values, device), row_stride, target_stride, max(tg_values))


def _alpha(log_probs: torch.Tensor, prepared: tuple, blank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(nll [N], log_alpha [N, T, 2 max(S) + 1]): the forward kernel on _prepare's tensors."""
    targets, starts, in_lens, tg_lens, row_stride, target_stride, max_target = prepared
    steps, batch, _ = log_probs.shape
    width = 2 * max_target + 1
    nll = torch.empty(batch, dtype=log_probs.dtype, device=log_probs.device)
    alpha = torch.full((batch, steps, width), float("-inf"), dtype=log_probs.dtype, device=log_probs.device)
    _alpha_kernel[(batch,)](log_probs, targets, targets if starts is None else starts, in_lens, tg_lens, nll, alpha,
                            blank, width, *log_probs.stride(), row_stride, target_stride, alpha.stride(0),
                            alpha.stride(1), PADDED=starts is None, BLOCK_J=next_power_of_2(max_target + 1),
                            num_warps=1 if max_target < 128 else 4)
    return nll, alpha


def ctc_loss_forward_triton(log_probs: torch.Tensor, targets: torch.Tensor, input_lengths, target_lengths,
                            blank: int = 0, zero_infinity: bool = False, *, out0: torch.Tensor | None = None,
                            out1: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """aten::_ctc_loss: (negative log-likelihood [N], log_alpha [N, T, 2 max(S) + 1]) of log_probs [T, N, C].
    zero_infinity acts in ctc_loss and the backward only, as in ATen."""
    _check_length_devices(log_probs, input_lengths, target_lengths)
    nll, alpha = _alpha(log_probs, _prepare(log_probs, targets, input_lengths, target_lengths, blank), blank)
    results = []
    for result, out in ((nll, out0), (alpha, out1)):
        if out is not None:
            check_same_dtype(log_probs.dtype, out)
            result = resize_out(out, result.shape).copy_(result)
        results.append(result)
    return results[0], results[1]


def ctc_loss_backward_triton(grad: torch.Tensor, log_probs: torch.Tensor, targets: torch.Tensor, input_lengths,
                             target_lengths, neg_log_likelihood: torch.Tensor, log_alpha: torch.Tensor, blank: int,
                             zero_infinity: bool = False, *, out: torch.Tensor | None = None) -> torch.Tensor:
    """aten::_ctc_loss_backward: gradient wrt log_probs [T, N, C] from that of the nll [N] and the
    forward's nll and log_alpha."""
    _check_length_devices(log_probs, input_lengths, target_lengths)
    targets, starts, in_lens, tg_lens, row_stride, target_stride, max_target = _prepare(
        log_probs, targets, input_lengths, target_lengths, blank)
    steps, batch, classes = log_probs.shape
    if grad.shape != (batch,) and grad.numel() != 1:
        raise RuntimeError(f"grad must have shape [{batch}] (one per sequence), got {list(grad.shape)}")
    if log_alpha.dim() != 3 or tuple(log_alpha.shape[:2]) != (batch, steps) or \
            log_alpha.shape[2] < 2 * max_target + 1:
        raise RuntimeError(f"log_alpha must be [N, T, 2 max(target_lengths) + 1], got {list(log_alpha.shape)}")
    if out is None:
        out = torch.empty(log_probs.shape, dtype=log_probs.dtype, device=log_probs.device)
    else:
        check_same_dtype(log_probs.dtype, out)
        resize_out(out, log_probs.shape)
    grad = grad.to(log_probs.dtype).expand(batch)
    _gradient_kernel[(batch,)](grad, log_probs, targets, targets if starts is None else starts, in_lens, tg_lens,
                               neg_log_likelihood, log_alpha, out, blank, steps, classes, int(bool(zero_infinity)),
                               grad.stride(0), neg_log_likelihood.stride(0), *log_probs.stride(), row_stride,
                               target_stride, *log_alpha.stride(), *out.stride(), PADDED=starts is None,
                               BLOCK_L=next_power_of_2(log_alpha.shape[2]),
                               BLOCK_C=min(BLOCK_C, next_power_of_2(classes)), num_warps=4)
    return out


def ctc_loss_triton(log_probs: torch.Tensor, targets: torch.Tensor, input_lengths, target_lengths, blank: int = 0,
                    reduction: int | str = "mean", zero_infinity: bool = False) -> torch.Tensor:
    """CTC loss of log_probs [T, N, C] (or unbatched [T, C]) against targets; reduction none / mean (each
    loss divided by its target length, then averaged) / sum; zero_infinity zeroes impossible alignments."""
    value = REDUCTIONS.get(reduction, -1) if isinstance(reduction, str) else int(reduction)
    if value not in REDUCTIONS.values():
        raise ValueError(f"reduction must be 'none', 'mean' or 'sum' (or 0, 1, 2), got {reduction!r}")
    unbatched = log_probs.dim() == 2
    if unbatched:
        log_probs, targets = log_probs.unsqueeze(1), targets.unsqueeze(0)
        input_lengths, target_lengths = ([int(torch.as_tensor(v).reshape(-1)[0])] if not isinstance(v, (list, tuple))
                                         else v for v in (input_lengths, target_lengths))
    prepared = _prepare(log_probs, targets, input_lengths, target_lengths, blank)
    nll, _ = _alpha(log_probs, prepared, blank)
    if zero_infinity:
        nll = torch.where(nll == float("inf"), torch.zeros_like(nll), nll)
    if value == REDUCTIONS["mean"]:
        return (nll / prepared[3].clamp_min(1)).mean()  # prepared[3]: target lengths on the device (int: nll's dtype)
    if value == REDUCTIONS["sum"]:
        return nll.sum()
    return nll.squeeze(0) if unbatched else nll


def ctc_loss_reference(log_probs: torch.Tensor, targets: torch.Tensor, input_lengths, target_lengths, blank: int = 0,
                       reduction: int | str = "mean", zero_infinity: bool = False) -> torch.Tensor:
    """CTC loss (torch's F.ctc_loss)."""
    if not isinstance(reduction, str):
        reduction = {v: k for k, v in REDUCTIONS.items()}[int(reduction)]
    return torch.nn.functional.ctc_loss(log_probs, targets, input_lengths, target_lengths, blank, reduction,
                                        zero_infinity)


def _bench_case(rows: int, dtype: torch.dtype, device: str, cols: int | None = None) -> BenchCase:
    """Core shape at rows=4096: T 200, N 32 (rows // 128), C 64 (cols), targets of 50; CPU: T 20, S 5."""
    on_gpu = device.startswith("cuda")
    steps, length, batch = (200, 50, max(rows // 128, 1)) if on_gpu else (20, 5, 2)
    classes = cols or 64
    log_probs = torch.randn(steps, batch, classes, device=device).log_softmax(-1).to(dtype)
    targets = torch.randint(1, classes, (batch, length), device=device)
    lengths = torch.full((batch,), steps, device=device), torch.full((batch,), length, device=device)
    return BenchCase((log_probs, targets, *lengths), bytes_moved=log_probs.numel() * log_probs.element_size())


for _name in ("aten::_ctc_loss", "aten::_ctc_loss.Tensor", "aten::_ctc_loss.out", "aten::_ctc_loss.Tensor_out"):
    register_aten(_name, ctc_loss_forward_triton)
for _name in ("aten::_ctc_loss_backward", "aten::_ctc_loss_backward.Tensor", "aten::_ctc_loss_backward.out"):
    register_aten(_name, ctc_loss_backward_triton)
ctc_loss = register("ctc_loss", reference=ctc_loss_reference, triton=ctc_loss_triton, bench_case=_bench_case)
