"""The engine loop shared by LLM (offline) and AsyncLLM (streaming): requests in, one step at a time,
token bookkeeping (stop conditions, detokenization) out."""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from flagstack.engine.config import EngineConfig, SamplingParams
from flagstack.engine.kv_cache import BlockManager
from flagstack.engine.runner import LaunchedStep, ModelRunner
from flagstack.engine.scheduler import ScheduledBatch, Scheduler
from flagstack.engine.sequence import Logprobs, Request, Sequence, Status
from flagstack.engine.warmup import warm_up


class EngineCore:
    def __init__(self, loaded, config: EngineConfig) -> None:
        self.loaded, self.config = loaded, config
        self.tokenizer = loaded.tokenizer
        self.eos_token_ids = list(loaded.eos_token_ids)
        self.vocab_size = int(loaded.hf_config.vocab_size)
        self.max_model_len = min(config.max_model_len or loaded.max_model_len, loaded.max_model_len)
        device = next(loaded.model.parameters()).device
        self.runner = ModelRunner(loaded, config, device, self.max_model_len)
        self.blocks = BlockManager(self.runner.num_blocks, config.block_size, config.enable_prefix_caching)
        self.scheduler = Scheduler(config, self.blocks, self.max_model_len)
        self.inflight: InflightStep | None = None  # launched, its tokens not yet read back
        self.device = device
        self.requests: dict[str, Request] = {}
        self.pending_children: dict[str, list[Sequence]] = {}  # n > 1: siblings waiting on the prompt
        if device.type == "cuda":  # compile every kernel variant now, not inside the first requests
            warm_up(self)

    # -- requests --------------------------------------------------------------------------------
    def encode(self, prompt: str | list[int]) -> tuple[str | None, list[int]]:
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValueError("prompt: this model has no tokenizer; pass token ids (list[int])")
            return prompt, list(self.tokenizer.encode(prompt))
        if not isinstance(prompt, (list, tuple)) or not all(isinstance(t, int) for t in prompt):
            raise ValueError(f"prompt must be a string or a list of token ids, got {type(prompt).__name__}")
        return None, list(prompt)

    def add_request(self, request_id: str, prompt: str | list[int], params: SamplingParams) -> Request:
        """Queue a request; ValueError for an empty or too long prompt, bad token ids, or a reused id."""
        if not isinstance(params, SamplingParams):
            raise ValueError(f"params must be SamplingParams, got {type(params).__name__}")
        if request_id in self.requests:
            raise ValueError(f"request_id '{request_id}' is already running")
        text, ids = self.encode(prompt)
        if not ids:
            raise ValueError("prompt is empty")
        if len(ids) >= self.max_model_len:
            raise ValueError(f"prompt has {len(ids)} tokens; the context (max_model_len) is {self.max_model_len}, "
                             f"which leaves no room to generate")
        for name, tokens in (("prompt token ids", ids), ("logprob_token_ids", params.logprob_token_ids)):
            if tokens and (min(tokens) < 0 or max(tokens) >= self.vocab_size):
                raise ValueError(f"{name} must be in [0, {self.vocab_size}), got {min(tokens)}..{max(tokens)}")
        request = Request(request_id, text, ids, params, time.time())
        if params.prompt_logprobs is not None:
            request.prompt_logprobs = [None] * len(ids)
        for i in range(params.n):
            gen = None
            if params.seed is not None:
                gen = torch.Generator().manual_seed(params.seed + i)
            request.sequences.append(Sequence(request, i, gen))
        first, *children = request.sequences
        for child in children:
            child.parent = first
        self.requests[request_id] = request
        if children:
            self.pending_children[request_id] = children
        self.scheduler.add(first)
        return request

    def abort(self, request_id: str) -> bool:
        """Stop a request and free its blocks; False if it is unknown or already done."""
        request = self.requests.pop(request_id, None)
        if request is None:
            return False
        self.pending_children.pop(request_id, None)
        for seq in request.sequences:
            if seq.status is not Status.FINISHED:
                seq.finish("abort")
            self.scheduler.finish(seq)
        return True

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished() or self.inflight is not None

    # -- one step --------------------------------------------------------------------------------
    def step(self) -> list[Request]:
        """Finish one batch; returns the requests that got new tokens or finished.

        With run-ahead (CUDA by default) the next batch is scheduled and launched before this one's
        tokens are read back, so the GPU computes it while the host does this step's bookkeeping; the
        next batch reads its decode inputs on the device. A sequence that turns out to have stopped
        wastes one row of that batch, whose token is dropped."""
        current = self.inflight or self._launch()
        self.inflight = None
        if current is None:
            if self.scheduler.waiting and not self.scheduler.running:
                raise RuntimeError("scheduler made no progress: a waiting sequence does not fit the KV cache")
            return []
        if self.run_ahead and current.launched.allows_run_ahead:
            self.inflight = self._launch()
        return self._finish(current)

    @property
    def run_ahead(self) -> bool:
        return self.config.async_scheduling if self.config.async_scheduling is not None else self.device.type == "cuda"

    def _launch(self) -> InflightStep | None:
        batch = self.scheduler.schedule()
        if not batch.seqs:
            return None
        launched = self.runner.launch(batch, self.eos_token_ids)
        for seq in launched.seqs:
            seq.num_pending += 1
        return InflightStep(batch, launched, self.scheduler.after_launch(batch))

    def _finish(self, step: InflightStep) -> list[Request]:
        """Read a launched step's tokens back and apply them (stops, detokenization, cache commits)."""
        sample = step.launched.sample.resolve()
        batch = step.batch
        self.scheduler.commit(batch, step.computed_before)
        for seq in batch.seqs:
            request = seq.request
            if seq.parent is None and not request.prompt_logprobs_done and not seq.in_prompt:  # prompt just done
                request.prompt_logprobs_done = True
                self._release_children(request, seq)
        touched: dict[str, Request] = {}
        now = time.time()
        for row, seq in enumerate(step.launched.seqs):
            seq.num_pending -= 1
            if seq.status is Status.FINISHED:  # stopped or aborted after this step was launched
                continue
            self._append(seq, sample.token_ids[row], sample.logprobs[row], sample.chosen_logprobs[row])
            request = seq.request
            request.first_token_time = request.first_token_time or now
            touched[request.request_id] = request
            if seq.status is Status.FINISHED and request.finished:  # its last sequence just ended
                self.requests.pop(request.request_id, None)
        return list(touched.values())

    def _release_children(self, request: Request, first: Sequence) -> None:
        """The prompt is in the cache: siblings take its full blocks and compute only the rest."""
        for child in self.pending_children.pop(request.request_id, []):
            self.blocks.share(child, first, child.num_prompt_tokens - 1)
            self.scheduler.add(child)

    def _append(self, seq: Sequence, token: int, logprobs: Logprobs | None, logprob: float) -> None:
        seq.token_ids.append(token)
        seq.cumulative_logprob += logprob
        if seq.logprobs is not None:
            seq.logprobs.append(logprobs)
        p = seq.params
        n_out = seq.num_output_tokens
        if n_out >= p.min_tokens and not p.ignore_eos and token in self.eos_token_ids:
            seq.finish("stop")
        elif n_out >= p.min_tokens and token in p.stop_token_ids:
            seq.finish("stop", token)
        elif seq.reaches_length_limit(self.max_model_len):
            seq.finish("length")
        if seq.constraint is not None and seq.constraint.accept(token) and seq.status is not Status.FINISHED:
            seq.finish("stop")  # the grammar is complete (or rejected the token)
        if self.tokenizer is not None and p.stop_strings:  # stop strings need the text as it grows
            self._detokenize_step(seq)
        if seq.status is Status.FINISHED:
            self.scheduler.finish(seq)
            if self.tokenizer is not None and not p.stop_strings:
                seq.text = self.tokenizer.decode(seq.output_token_ids, skip_special_tokens=p.skip_special_tokens)

    def _detokenize_step(self, seq: Sequence) -> None:
        p = seq.params
        before = len(seq.text)
        seq.text += seq.detok.step(self.tokenizer, seq.token_ids, p.skip_special_tokens)
        if seq.status is Status.FINISHED or not p.stop_strings or n_before_min(seq):
            return
        search_from = max(0, before - max(len(s) for s in p.stop_strings) + 1)
        for stop in p.stop_strings:
            at = seq.text.find(stop, search_from)
            if at >= 0:
                seq.text = seq.text[:at + len(stop)] if p.include_stop_str_in_output else seq.text[:at]
                seq.finish("stop", stop)
                return

    # -- stats -----------------------------------------------------------------------------------
    def stats(self) -> dict[str, float]:
        s = self.blocks.stats
        return {
            "prefix_cache_hit_rate": s.hit_rate,
            "prompt_tokens_sent": s.prompt_tokens_sent,
            "prompt_tokens_computed": s.prompt_tokens_computed,
            "prompt_tokens_cached": s.prefix_hits,
            "kv_cache_usage": self.blocks.usage,
            "num_kv_blocks": self.blocks.num_blocks,
            "num_preemptions": self.scheduler.num_preemptions,
        }


@dataclass
class InflightStep:
    batch: ScheduledBatch
    launched: LaunchedStep
    computed_before: list[int]  # each sequence's computed tokens before the step (for prefix-cache commits)


def n_before_min(seq: Sequence) -> bool:
    """True while min_tokens forbids stopping."""
    return seq.num_output_tokens < seq.params.min_tokens
