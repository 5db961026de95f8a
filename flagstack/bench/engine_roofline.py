"""Roofline of an inference step: the bytes it must move and the FLOPs it must do, from the model config.

A step runs a batch of sequences, each bringing `new` tokens after `context` tokens already in the KV
cache. Its floor is max(bytes / copy bandwidth, FLOPs / GEMM throughput), both measured on the device:
- bytes: every weight matrix once (layers + the vocab x hidden output matrix; the embedding lookup
  reads only a few rows), plus the KV cache read (context) and written (new) per sequence.
  Activations are left out: at batch sizes that matter they are a small share of the traffic.
- FLOPs: 2 per weight per new token through the layers, 2 * vocab * hidden per sampled row (logits
  of other rows are not computed), and 4 * heads * head_dim per (query, key) pair per layer
  (QK^T and PV) over the causal context.
A phase's floor is the sum of its steps' floors; the fraction achieved is floor / measured time.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, NamedTuple


class SeqStep(NamedTuple):
    """One sequence's part of a step: tokens cached before it, tokens it computes, and whether it
    samples (needs logits) at the end of the step."""

    context: int
    new: int
    sampled: bool = True


@dataclass(frozen=True)
class ModelCost:
    """Per-step cost coefficients of a decoder-only transformer."""

    weight_bytes: int  # bytes of the weights a step reads
    kv_bytes_per_token: int  # K and V of one token over all layers
    layer_params: int  # weights a token passes through in the layers (matmuls)
    vocab_hidden: int  # vocab x hidden: the output matrix
    attn_flops_per_pair: int  # 4 * heads * head_dim * layers

    @classmethod
    def from_config(cls, config, dtype_bytes: int, kv_dtype_bytes: int | None = None) -> "ModelCost":
        """From an HF config (Llama / Qwen3 fields); biases and q/k norms are counted, norms' bytes too.
        kv_dtype_bytes: the KV cache's element size when it differs from the weights' (an fp8 cache)."""
        hidden, layers = int(config.hidden_size), int(config.num_hidden_layers)
        heads = int(config.num_attention_heads)
        kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
        head_dim = int(getattr(config, "head_dim", None) or hidden // heads)
        q, kv = heads * head_dim, kv_heads * head_dim
        inter = int(config.intermediate_size)
        matmuls = hidden * (q + 2 * kv) + q * hidden + 3 * hidden * inter
        biases = (q + 2 * kv + hidden) if getattr(config, "attention_bias", False) else 0  # qkv and o
        biases += (2 * inter + hidden) if getattr(config, "mlp_bias", False) else 0
        norms = 2 * hidden + (2 * head_dim if config.model_type == "qwen3" else 0)
        vocab_hidden = int(config.vocab_size) * hidden
        weights = layers * (matmuls + biases + norms) + hidden + vocab_hidden
        kv_bytes = 2 * layers * kv * (kv_dtype_bytes or dtype_bytes)
        return cls(weight_bytes=weights * dtype_bytes, kv_bytes_per_token=kv_bytes,
                   layer_params=layers * matmuls, vocab_hidden=vocab_hidden,
                   attn_flops_per_pair=4 * heads * head_dim * layers)

    def step_bytes(self, seqs: Iterable[SeqStep]) -> int:
        """Weights once, plus each sequence's KV read (context) and write (new tokens)."""
        return self.weight_bytes + self.kv_bytes_per_token * sum(s.context + s.new for s in seqs)

    def step_flops(self, seqs: Iterable[SeqStep]) -> int:
        """Matmul FLOPs of the new tokens, logits of the sampled rows, causal attention."""
        seqs = list(seqs)
        tokens = sum(s.new for s in seqs)
        # query i of a chunk (0-based) attends to context + i + 1 keys
        pairs = sum(s.new * s.context + s.new * (s.new + 1) // 2 for s in seqs)
        sampled = sum(1 for s in seqs if s.sampled)
        return 2 * self.layer_params * tokens + 2 * self.vocab_hidden * sampled + self.attn_flops_per_pair * pairs


@dataclass(frozen=True)
class DeviceCeiling:
    """Measured limits: bytes per second of a device copy, FLOPs per second of a large GEMM."""

    bytes_per_s: float
    flops_per_s: float

    def step_floor_s(self, cost: ModelCost, seqs: Iterable[SeqStep]) -> float:
        """The least time a step can take: bound by memory traffic or by arithmetic, whichever is slower."""
        seqs = list(seqs)
        return max(cost.step_bytes(seqs) / self.bytes_per_s, cost.step_flops(seqs) / self.flops_per_s)

    def floor_s(self, cost: ModelCost, steps: Iterable[Iterable[SeqStep]]) -> float:
        """Sum of the steps' floors."""
        return sum(self.step_floor_s(cost, s) for s in steps)


def decode_steps(batch: int, input_len: int, new_tokens: int) -> list[list[SeqStep]]:
    """The decode steps of `batch` equal sequences generating `new_tokens` after an `input_len` prompt:
    the prefill samples the first token, then step t (1..new_tokens-1) feeds token t after input_len + t - 1
    cached tokens."""
    return [[SeqStep(input_len + t - 1, 1)] * batch for t in range(1, new_tokens)]


def padded_batch_steps(input_lens: list[int], new_tokens: int) -> list[list[SeqStep]]:
    """The steps of a static padded batch (HF generate): one prefill of the longest prompt for every
    row, then the decode steps, every row reading the padded context."""
    if not input_lens or new_tokens < 1:
        raise ValueError(f"input_lens must be non-empty and new_tokens >= 1, got {input_lens}, {new_tokens}")
    width, rows = max(input_lens), len(input_lens)
    return [[SeqStep(0, width)] * rows] + decode_steps(rows, width, new_tokens)
