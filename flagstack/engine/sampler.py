"""Token choice for one step: penalties, min_tokens, temperature / top-k / top-p / min-p, per-request
seeds, and logprobs (of the raw model distribution, as vLLM reports them by default).

Random choice is flagstack.ops.sample (temperature, top-k, top-p, min-p; Triton on CUDA). A seeded
request has its own CPU generator that gives each step's row seed.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from flagstack import ops
from flagstack.engine.sequence import Logprobs, Sequence


@dataclass
class SampleOutput:
    token_ids: list[int]
    logprobs: list[Logprobs | None]  # per row: top-N plus the chosen token, or None when not asked
    chosen_logprobs: list[float]  # raw logprob of each chosen token (for cumulative_logprob)


@dataclass
class PendingSample:
    """A step's choices on their way to the host: the copy is queued behind the step on the GPU, so the
    host can launch the next step (whose inputs read `token_ids` on the device) before waiting for it."""

    token_ids: torch.Tensor  # int64 [B] on the logits' device
    host: torch.Tensor  # float64 [2, B]: ids and chosen logprobs, filled when `ready` has passed
    ready: torch.cuda.Event | None  # None on CPU: host is already filled
    logprobs: list[Logprobs | None]

    def resolve(self) -> SampleOutput:
        """Wait for the copy and read the choices (one synchronization per step)."""
        if self.ready is not None:
            self.ready.synchronize()
        ids, chosen_lp = self.host.tolist()
        return SampleOutput([int(t) for t in ids], self.logprobs, chosen_lp)


def logprob_dicts(logprobs: torch.Tensor, chosen: torch.Tensor, top_n: list[int]) -> list[Logprobs]:
    """Per row: the top_n[row] most likely tokens and the chosen token, id -> logprob."""
    k = max(top_n, default=0)
    top_vals, top_ids = (logprobs.topk(k, dim=-1) if k else (logprobs[:, :0], logprobs[:, :0].long()))
    chosen_vals = logprobs.gather(1, chosen[:, None].long())[:, 0]
    top_vals, top_ids, chosen_vals = top_vals.tolist(), top_ids.tolist(), chosen_vals.tolist()
    out = []
    for row, n in enumerate(top_n):
        entry = dict(zip(top_ids[row][:n], top_vals[row][:n]))
        entry[int(chosen[row])] = chosen_vals[row]
        out.append(entry)
    return out


def apply_penalties(logits: torch.Tensor, seqs: list[Sequence]) -> None:
    """vLLM semantics, in place: repetition penalty on prompt + output tokens (positive logits divided,
    negative multiplied); presence and frequency penalties on output tokens."""
    rows, vocab = logits.shape
    device = logits.device
    seen = torch.zeros(rows, vocab + 1, dtype=torch.bool, device=device)  # column `vocab` = padding
    counts = torch.zeros(rows, vocab + 1, dtype=logits.dtype, device=device)
    for r, seq in enumerate(seqs):
        p = seq.params
        if p.repetition_penalty != 1.0:
            seen[r, torch.tensor(seq.token_ids, device=device)] = True
        out = seq.output_token_ids
        if out and (p.presence_penalty or p.frequency_penalty):
            counts[r].index_add_(0, torch.tensor(out, device=device), torch.ones(len(out), device=device))
    seen, counts = seen[:, :vocab], counts[:, :vocab]
    rep = torch.tensor([s.params.repetition_penalty for s in seqs], device=device)[:, None]
    presence = torch.tensor([s.params.presence_penalty for s in seqs], device=device)[:, None]
    frequency = torch.tensor([s.params.frequency_penalty for s in seqs], device=device)[:, None]
    penalized = torch.where(logits > 0, logits / rep, logits * rep)
    logits.copy_(torch.where(seen, penalized, logits))
    logits -= presence * (counts > 0) + frequency * counts


class Sampler:
    def __init__(self, generator: torch.Generator, seed: int = 0) -> None:
        self.generator = generator  # on the logits' device, for batches without a seeded request
        self.seed_generator = torch.Generator().manual_seed(seed)  # row seeds of unseeded requests

    def __call__(self, logits: torch.Tensor, seqs: list[Sequence], eos_token_ids: list[int]) -> SampleOutput:
        """Choose one token per row of logits [B, V] (fp32, not modified) for seqs[row]."""
        return self.launch(logits, seqs, eos_token_ids).resolve()

    def launch(self, logits: torch.Tensor, seqs: list[Sequence], eos_token_ids: list[int]) -> PendingSample:
        """Queue the choice of one token per row; the host reads them with resolve()."""
        params = [s.params for s in seqs]
        work = logits
        if any(p.has_penalties for p in params):
            work = logits.clone()
            apply_penalties(work, seqs)
        # tokens before this one: those the host has and those still on their way (num_pending)
        banned = [r for r, s in enumerate(seqs) if s.num_output_tokens + s.num_pending < s.params.min_tokens]
        if banned:
            work = work.clone() if work is logits else work
            for r in banned:
                stop_ids = list(seqs[r].params.stop_token_ids) + ([] if params[r].ignore_eos else eos_token_ids)
                work[r, stop_ids] = float("-inf")
        constrained = [r for r, s in enumerate(seqs) if s.constraint is not None]
        if constrained:  # structured output: tokens the grammar forbids get -inf
            work = work.clone() if work is logits else work
            for r in constrained:
                seqs[r].constraint.mask_logits(work[r])
        # greedy choice and the logsumexp for the chosen tokens' logprobs in one read of the logits
        greedy, lse = ops.argmax_logsumexp(logits)
        chosen = greedy if work is logits else work.argmax(dim=-1)
        random_rows = [r for r, p in enumerate(params) if not p.greedy]
        if random_rows:
            chosen[random_rows] = self._sample(work[random_rows], [seqs[r] for r in random_rows])
        wanted = [p.logprobs for p in params]
        dicts: list[Logprobs | None] = [None] * len(seqs)
        asked = [r for r, n in enumerate(wanted) if n is not None]
        if asked:
            raw = torch.log_softmax(logits[asked], dim=-1)
            for k, (r, d) in enumerate(zip(asked, logprob_dicts(raw, chosen[asked], [wanted[r] for r in asked]))):
                extra = params[r].logprob_token_ids
                if extra:  # tokens the caller wants scored whatever their rank (e.g. every label)
                    d.update(zip(extra, raw[k, extra].tolist()))
                dicts[r] = d
        # the chosen tokens' logprobs without a full log_softmax: logit - logsumexp(row)
        chosen_lp = logits.gather(1, chosen[:, None])[:, 0] - lse
        # one device-to-host copy for both: float64 holds every token id exactly
        packed = torch.stack((chosen.double(), chosen_lp.double()))
        if packed.device.type != "cuda":
            return PendingSample(chosen, packed, None, dicts)
        host = torch.empty(packed.shape, dtype=packed.dtype, pin_memory=True)
        host.copy_(packed, non_blocking=True)
        ready = torch.cuda.Event()
        ready.record()
        return PendingSample(chosen, host, ready, dicts)

    def _sample(self, logits: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
        """flagstack.ops.sample with per-row settings; a seeded request draws each step's row seed from
        its own generator, so its tokens do not depend on the rest of the batch."""
        p = [s.params for s in seqs]
        args = (logits, [x.temperature for x in p], [x.top_k for x in p], [x.top_p for x in p], [x.min_p for x in p])
        if all(s.generator is None for s in seqs):
            return ops.sample(*args, generator=self.generator)
        seeds = [int(torch.randint(1 << 62, (1,), generator=s.generator or self.seed_generator)) for s in seqs]
        return ops.sample(*args, seeds=seeds)
