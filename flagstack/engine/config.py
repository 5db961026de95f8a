"""Engine and sampling settings: plain dataclasses checked on construction (ValueError names the field)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable


KV_CACHE_DTYPES = ("auto", "fp8", "fp8_e4m3")  # EngineConfig.kv_cache_dtype's values


def _require(ok: bool, name: str, expected: str, value: object) -> None:
    if not ok:
        raise ValueError(f"{name} must be {expected}, got {value!r}")


@dataclass
class EngineConfig:
    """How the engine loads the model, sizes its KV cache and batches requests."""

    dtype: str | None = None  # "float32" | "float16" | "bfloat16"; None: bf16 on CUDA, fp32 on CPU
    device: str | None = None  # None: cuda when available, else cpu
    load_format: str = "auto"
    max_model_len: int | None = None  # None: the model's own limit
    max_num_seqs: int = 256  # sequences in one step (also the largest CUDA-graph batch)
    # new tokens in one step (decode tokens + prefill chunks); 8192 over 4096 on an H200, alternated runs:
    # +1% output tok/s for 64 requests, +0.7% offline (bench/results/engine-step-tokens-abba-*)
    max_num_batched_tokens: int = 8192
    block_size: int = 16
    # "auto": the model's dtype; "fp8" / "fp8_e4m3": e4m3 K/V at half the bytes of bf16, per-tensor scale 1.0
    # (as vLLM without calibrated scales): twice the cached tokens, half the decode attention traffic
    kv_cache_dtype: str = "auto"
    gpu_memory_utilization: float = 0.9  # share of the GPU the engine may fill (weights + activations + KV)
    cpu_kv_cache_bytes: int = 1 << 30  # KV budget on CPU
    num_kv_blocks: int | None = None  # fixed pool size (tests force preemption with a tiny pool)
    enable_prefix_caching: bool = True
    enable_chunked_prefill: bool = True
    enforce_eager: bool = False  # True: no CUDA graphs
    # launch the next step before reading this one's tokens back (None: on CUDA, where it hides host time)
    async_scheduling: bool | None = None
    seed: int = 0  # seeds dummy weights and unseeded sampling

    def __post_init__(self) -> None:
        _require(self.dtype in (None, "float32", "float16", "bfloat16"), "dtype",
                 "None, 'float32', 'float16' or 'bfloat16'", self.dtype)
        _require(self.kv_cache_dtype in KV_CACHE_DTYPES, "kv_cache_dtype",
                 "'auto', 'fp8' or 'fp8_e4m3'", self.kv_cache_dtype)
        _require(self.load_format in ("auto", "safetensors", "gguf", "dummy"), "load_format",
                 "'auto', 'safetensors', 'gguf' or 'dummy'", self.load_format)
        _require(self.max_model_len is None or self.max_model_len > 1, "max_model_len", "None or > 1",
                 self.max_model_len)
        for name in ("max_num_seqs", "max_num_batched_tokens", "block_size", "cpu_kv_cache_bytes"):
            _require(getattr(self, name) >= 1, name, ">= 1", getattr(self, name))
        _require(self.num_kv_blocks is None or self.num_kv_blocks >= 1, "num_kv_blocks", "None or >= 1",
                 self.num_kv_blocks)
        _require(0.0 < self.gpu_memory_utilization <= 1.0, "gpu_memory_utilization", "in (0, 1]",
                 self.gpu_memory_utilization)


@dataclass
class SamplingParams:
    """Per-request decoding settings, with vLLM's names and meanings."""

    n: int = 1
    temperature: float = 1.0  # 0 = greedy
    top_k: int = 0  # <= 0: off
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0  # on prompt and output tokens (divides positive logits)
    presence_penalty: float = 0.0  # on output tokens
    frequency_penalty: float = 0.0  # on output tokens, per occurrence
    seed: int | None = None
    max_tokens: int | None = 16  # None: up to the model's context
    min_tokens: int = 0
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    include_stop_str_in_output: bool = False
    ignore_eos: bool = False
    logprobs: int | None = None  # top-N logprobs per generated token (plus the sampled token's)
    logprob_token_ids: list[int] | None = None  # and these tokens' logprobs too (label scoring), with logprobs
    prompt_logprobs: int | None = None  # top-N per prompt position (plus the actual token's)
    prompt_logprobs_from: int = 0  # first prompt position scored; negative counts from the end
    skip_special_tokens: bool = True
    # structured output: called once per sequence, returns an object with mask_logits(row) (in place,
    # before sampling) and accept(token) -> True when the sequence must stop (grammar done or broken)
    constraint_factory: Callable[[], Any] | None = field(default=None, repr=False)
    stop_strings: list[str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        _require(self.n >= 1, "n", ">= 1", self.n)
        _require(self.temperature >= 0.0, "temperature", ">= 0", self.temperature)
        _require(0.0 < self.top_p <= 1.0, "top_p", "in (0, 1]", self.top_p)
        _require(0.0 <= self.min_p <= 1.0, "min_p", "in [0, 1]", self.min_p)
        _require(self.repetition_penalty > 0.0, "repetition_penalty", "> 0", self.repetition_penalty)
        _require(-2.0 <= self.presence_penalty <= 2.0, "presence_penalty", "in [-2, 2]", self.presence_penalty)
        _require(-2.0 <= self.frequency_penalty <= 2.0, "frequency_penalty", "in [-2, 2]",
                 self.frequency_penalty)
        _require(self.max_tokens is None or self.max_tokens >= 1, "max_tokens", "None or >= 1", self.max_tokens)
        _require(self.min_tokens >= 0 and (self.max_tokens is None or self.min_tokens <= self.max_tokens),
                 "min_tokens", "in [0, max_tokens]", self.min_tokens)
        _require(self.logprobs is None or self.logprobs >= 0, "logprobs", "None or >= 0", self.logprobs)
        _require(self.prompt_logprobs is None or self.prompt_logprobs >= 0, "prompt_logprobs", "None or >= 0",
                 self.prompt_logprobs)
        _require(not self.logprob_token_ids or self.logprobs is not None, "logprob_token_ids",
                 "given together with logprobs (>= 0)", self.logprob_token_ids)
        self.logprob_token_ids = [int(t) for t in (self.logprob_token_ids or [])]
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        _require(all(isinstance(s, str) and s for s in stop), "stop", "a non-empty string or list of them",
                 self.stop)
        self.stop_strings = stop
        self.stop_token_ids = [int(t) for t in (self.stop_token_ids or [])]

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def has_penalties(self) -> bool:
        return self.repetition_penalty != 1.0 or self.presence_penalty != 0.0 or self.frequency_penalty != 0.0

    def first_scored_prompt_position(self, prompt_len: int) -> int:
        """The first prompt position whose logprob is returned (>= 1: position 0 has no logits before it)."""
        start = self.prompt_logprobs_from
        if start < 0:
            start += prompt_len
        return min(max(start, 1), prompt_len)
