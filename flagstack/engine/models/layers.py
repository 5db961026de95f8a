"""The decoder pieces Llama and Qwen3 share: RMSNorm, fused gate/up MLP, the fused-QKV attention block,
the decoder layer / stack, and the causal-LM wrapper the engine talks to.

The two architectures differ only in how q and k are prepared before attention (Qwen3 normalizes
each head before RoPE), so each model file supplies that one step (`Attention.rotate`).
Every op goes through flagstack.ops (Triton on CUDA, PyTorch references elsewhere).
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.weak import WeakIdKeyDictionary
from transformers import PretrainedConfig

from flagstack.engine.models.attention import PagedAttention
from flagstack.ops import add_rms_norm, embedding, gemv, rms_norm, rope_cos_sin_cache, silu_and_mul


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None):
        """rms_norm(x); with a residual: residual += x in place, return (rms_norm(residual), residual)."""
        if residual is None:
            return rms_norm(x, self.weight, self.eps)
        return add_rms_norm(x, residual, self.weight, self.eps)


DECODE_ROWS = 64  # up to this many rows an unpacked CPU GEMM takes the (W @ x^T)^T form (see `linear`)
GEMV_MAX_OUT = 32768  # one CUDA row goes to ops.gemv for weights up to this many outputs (not lm_head)
PACK_ROWS_HINT = DECODE_ROWS  # oneDNN packs for this many rows (a hint of 1 was ~20% slower at 7-2048;
# hints of 64, 512 and 2048 ran within noise of each other at 8-2048 rows)
_PACKED: WeakIdKeyDictionary = WeakIdKeyDictionary()  # weight -> (its version when packed, packed copy)


def cpu_packing_enabled() -> bool:
    """Whether CPU fp32/bf16 GEMMs use oneDNN-packed weights (FLAGSTACK_CPU_PACKED=0 turns it off)."""
    return torch.backends.mkldnn.is_available() and os.environ.get("FLAGSTACK_CPU_PACKED", "1") != "0"


def packed_weight(weight: torch.Tensor) -> torch.Tensor:
    """A oneDNN-blocked copy of `weight`, made once per weight and again after the weight changes."""
    version = 0 if weight.is_inference() else weight._version  # inference tensors keep no version
    entry = _PACKED.get(weight)
    if entry is None or entry[0] != version:
        entry = (version, torch.ops.mkldnn._reorder_linear_weight(weight.detach(), PACK_ROWS_HINT))
        _PACKED[weight] = entry
    return entry[1]


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear, except on CPU (2-D inputs) and for a single row on CUDA.

    CPU: 2+ rows in fp32, or any rows in bf16, without autograd: oneDNN's GEMM on a packed copy of the
    weight; a single fp32 row, or 2..DECODE_ROWS rows that cannot be packed, (W @ x^T)^T. In bf16 (2 threads,
    AVX512-BF16) the packed GEMM ran 2-5x faster than F.linear or (W @ x^T)^T at 1-8 rows, 1.1-1.6x at 32,
    and a batch-1 engine decode 1.35-1.5x faster (bench/results/engine-bf16-cpu-*). Measured on the
    2-core AMD EPYC CI machine (2 threads, SmolLM2's four projections of a layer): packed oneDNN ran
    120-130 GFLOP/s against MKL F.linear's 95-108 at 512-2048 rows, and 35-80 against 21-54 at 8-64 rows;
    whole engine prefill steps, interleaved in one process, 404 vs 364 tok/s at 512 tokens and 343 vs 313
    at 2048 (medians of 5). One row alone was 1.4 vs 1.8 ms packed, but whole batch-1 generations with
    2 threads ran ~5% slower packed (alternated runs), so one row keeps (W @ x^T)^T; MKL's x @ W^T of a
    few rows was 1.1-3x slower than W @ x^T and a single row ran faster as two.
    CUDA: one row goes to ops.gemv (no split-K: 15% less GPU time than cuBLAS over Qwen3-4B's four
    projections on an H100; cuBLAS already streams the 151,936-row lm_head at ~3 TB/s).
    """
    rows = x.shape[0]
    if x.is_cuda and x.dim() == 2 and rows == 1 and bias is None and weight.shape[0] <= GEMV_MAX_OUT:
        return gemv(x, weight)
    if x.device.type != "cpu" or x.dim() != 2 or rows == 0:
        return F.linear(x, weight, bias)
    packable = (x.dtype == weight.dtype == torch.float32 and rows > 1) or x.dtype == weight.dtype == torch.bfloat16
    if (packable and cpu_packing_enabled()
            and not (torch.is_grad_enabled() and (weight.requires_grad or x.requires_grad))):
        return torch.ops.mkldnn._linear_pointwise(x, packed_weight(weight), bias, "none", [], "")
    if rows > DECODE_ROWS:
        return F.linear(x, weight, bias)
    cols = (x if rows > 1 else x.repeat(2, 1)).t()  # x^T as a transposed view: MKL's fast layout here
    out = torch.mm(weight, cols)[:, :rows].t().contiguous()
    return out if bias is None else out.add_(bias)


class Linear(nn.Linear):
    """nn.Linear through `linear` (the faster CPU form for decode-sized inputs)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)


class FusedLinear(Linear):
    """A Linear whose output rows stack several HF projections (q|k|v or gate|up); the loader
    copies each HF shard into its row range."""

    def __init__(self, in_features: int, shard_sizes: list[int], bias: bool) -> None:
        super().__init__(in_features, sum(shard_sizes), bias=bias)
        self.shard_sizes = list(shard_sizes)

    def shard_range(self, index: int) -> tuple[int, int]:
        start = sum(self.shard_sizes[:index])
        return start, start + self.shard_sizes[index]


class GatedMLP(nn.Module):
    """down(silu(gate(x)) * up(x)) with gate and up in one GEMM."""

    def __init__(self, hidden: int, intermediate: int, bias: bool) -> None:
        super().__init__()
        self.gate_up_proj = FusedLinear(hidden, [intermediate, intermediate], bias)
        self.down_proj = Linear(intermediate, hidden, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(silu_and_mul(self.gate_up_proj(x)))


def head_dim_of(config: PretrainedConfig) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


class Attention(nn.Module):
    """Fused QKV projection, q/k rotation (subclass hook), paged attention, output projection."""

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = getattr(config, "num_key_value_heads", None) or self.num_heads
        self.head_dim = head_dim_of(config)
        self.q_size, self.kv_size = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        bias = bool(getattr(config, "attention_bias", False))
        self.qkv_proj = FusedLinear(config.hidden_size, [self.q_size, self.kv_size, self.kv_size], bias)
        self.o_proj = Linear(self.q_size, config.hidden_size, bias=bias)
        self.attn = PagedAttention(self.num_heads, self.num_kv_heads, self.head_dim, self.head_dim ** -0.5)

    def rotate(self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
               cos_sin_cache: torch.Tensor) -> None:
        """Apply position encoding to q [T, Hq*D] and k [T, Hkv*D] in place."""
        raise NotImplementedError

    def forward(self, positions: torch.Tensor, x: torch.Tensor, cos_sin_cache: torch.Tensor,
                rows: torch.Tensor | None = None) -> torch.Tensor:
        """Output for every row of x, or only for `rows` (every row's K/V is still stored)."""
        qkv = self.qkv_proj(x)
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        self.rotate(positions, q, k, cos_sin_cache)
        t = x.shape[0]
        q = q.view(t, self.num_heads, self.head_dim)
        if rows is not None:
            q = q.index_select(0, rows)
        o = self.attn(q, k.view(t, self.num_kv_heads, self.head_dim), v.view(t, self.num_kv_heads, self.head_dim))
        return self.o_proj(o.reshape(q.shape[0], self.q_size))


class DecoderLayer(nn.Module):
    def __init__(self, config: PretrainedConfig, attention_cls: type[Attention]) -> None:
        super().__init__()
        self.self_attn = attention_cls(config)
        self.mlp = GatedMLP(config.hidden_size, config.intermediate_size, bool(getattr(config, "mlp_bias", False)))
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, positions: torch.Tensor, h: torch.Tensor, residual: torch.Tensor | None,
                cos_sin_cache: torch.Tensor, rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(MLP output, residual) for every row, or only for `rows` (see Attention.forward)."""
        # residual stream kept apart from the normalized input, so each add is fused into the next norm
        if residual is None:
            residual, h = h, self.input_layernorm(h)
        else:
            h, residual = self.input_layernorm(h, residual)
        h = self.self_attn(positions, h, cos_sin_cache, rows)
        if rows is not None:
            residual = residual.index_select(0, rows)
        h, residual = self.post_attention_layernorm(h, residual)
        return self.mlp(h), residual


def rope_settings(config: PretrainedConfig) -> tuple[float, dict | None]:
    """(rope base, scaling dict or None) from a transformers 5 `rope_parameters` or legacy fields."""
    params = dict(getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {})
    base = params.pop("rope_theta", None) or getattr(config, "rope_theta", None) or 10000.0
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type not in ("default", "llama3"):
        raise ValueError(f"rope scaling type '{rope_type}' is not supported (default or llama3)")
    return float(base), (params if rope_type == "llama3" else None)


class DecoderModel(nn.Module):
    def __init__(self, config: PretrainedConfig, attention_cls: type[Attention]) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, attention_cls) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, cos_sin_cache: torch.Tensor,
                rows: torch.Tensor | None = None) -> torch.Tensor:
        h = embedding(input_ids, self.embed_tokens.weight)
        residual = None
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            h, residual = layer(positions, h, residual, cos_sin_cache, rows if i == last else None)
        return self.norm(h, residual)[0]


class CausalLM(nn.Module):
    """The engine-facing model: forward(input_ids[T], positions[T][, rows]) -> hidden[T, H] over the paged
    cache (attention reads flagstack.engine.context), compute_logits(hidden) -> fp32 logits."""

    attention_cls: type[Attention] = Attention
    # HF projection name -> (our fused module name, shard index)
    packed_modules = {"q_proj": ("qkv_proj", 0), "k_proj": ("qkv_proj", 1), "v_proj": ("qkv_proj", 2),
                      "gate_proj": ("gate_up_proj", 0), "up_proj": ("gate_up_proj", 1)}

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__()
        self.config = config
        self.model = DecoderModel(config, self.attention_cls)
        self.tie_word_embeddings = bool(getattr(config, "tie_word_embeddings", False))
        if not self.tie_word_embeddings:
            self.lm_head = Linear(config.hidden_size, config.vocab_size, bias=False)
        self.head_dim = head_dim_of(config)
        self.rope_base, self.rope_scaling = rope_settings(config)
        self.register_buffer("cos_sin_cache", torch.empty(0), persistent=False)

    def materialize(self, device: torch.device | str) -> None:
        """Allocate (uninitialized) parameters on `device` for a model built on meta; build the RoPE table."""
        self.to_empty(device=device)
        self.cos_sin_cache = rope_cos_sin_cache(self.head_dim, self.config.max_position_embeddings, self.rope_base,
                                                self.rope_scaling, device=device)

    @property
    def lm_head_weight(self) -> torch.Tensor:
        return self.model.embed_tokens.weight if self.tie_word_embeddings else self.lm_head.weight

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                rows: torch.Tensor | None = None) -> torch.Tensor:
        """Hidden states [T, H] of the new tokens, or [len(rows), H] of only `rows` (int64 indices, each
        the last new token of its sequence, described by the step's `rows_meta`): the last layer then
        stores every row's K/V but runs attention, o_proj and the MLP on those rows alone."""
        return self.model(input_ids, positions, self.cos_sin_cache, rows)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return linear(hidden, self.lm_head_weight).float()

    def attention_layers(self) -> list[PagedAttention]:
        return [layer.self_attn.attn for layer in self.model.layers]
