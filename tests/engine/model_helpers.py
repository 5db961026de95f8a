"""Test helpers: tiny random HF models, and running an engine model step by step over a paged KV
cache set up by hand (no runner)."""
from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

from flagstack.engine.context import AttentionMetadata, step_context

VOCAB = 96
COMMON = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-6)


def tiny_hf_model(arch: str, **overrides) -> torch.nn.Module:
    """A random HF model ("llama" or "qwen3"); norm weights and biases randomized too so that they matter."""
    torch.manual_seed(0)
    if arch == "llama":  # Llama 3 rope scaling, biases, untied head
        fields = dict(COMMON, rope_theta=500.0, attention_bias=True, tie_word_embeddings=False, eos_token_id=[3, 5],
                      rope_scaling={"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0,
                                    "high_freq_factor": 4.0, "original_max_position_embeddings": 16})
        model = LlamaForCausalLM(LlamaConfig(**{**fields, **overrides}))
    else:  # head_dim != hidden / heads, tied embeddings, q/k norms
        fields = dict(COMMON, head_dim=32, rope_theta=1000.0, tie_word_embeddings=True, eos_token_id=7)
        model = Qwen3ForCausalLM(Qwen3Config(**{**fields, **overrides}))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(1.0, 0.2)
            elif name.endswith("bias"):
                p.normal_(0.0, 0.1)
    return model.eval()


class PagedSteps:
    """Gives each sequence its own pages (handed out in reverse order, so a sequence's pages are not
    ascending) and runs packed steps of new tokens."""

    def __init__(self, model: torch.nn.Module, num_seqs: int, max_len: int, num_kv_heads: int, head_dim: int,
                 block_size: int = 4, dtype: torch.dtype = torch.float32, device: str = "cpu") -> None:
        self.model, self.block_size, self.device = model, block_size, device
        max_blocks = -(-max_len // block_size)
        pages = torch.arange(num_seqs * max_blocks, dtype=torch.int32).flip(0)
        self.block_tables = pages.view(num_seqs, max_blocks)
        for layer in model.attention_layers():
            layer.k_cache = torch.zeros(num_seqs * max_blocks, block_size, num_kv_heads, head_dim, dtype=dtype,
                                        device=device)
            layer.v_cache = torch.zeros_like(layer.k_cache)
        self.lengths = [0] * num_seqs

    def step(self, new_tokens: list[list[int]], last_only: bool = False) -> torch.Tensor:
        """Run one step where sequence s brings new_tokens[s] (none: not in this step); fp32 logits of
        every new token, packed in sequence order (last_only: of each sequence's last new token, which
        the model then computes alone in its last layer)."""
        ids, positions, slots, cu = [], [], [], [0]
        active = [s for s, toks in enumerate(new_tokens) if toks]
        for s in active:
            toks = new_tokens[s]
            pos = torch.arange(self.lengths[s], self.lengths[s] + len(toks))
            ids.append(torch.tensor(toks, dtype=torch.long))
            positions.append(pos)
            slots.append(self.block_tables[s, pos // self.block_size].long() * self.block_size + pos % self.block_size)
            cu.append(cu[-1] + len(toks))
            self.lengths[s] += len(toks)
        seq_lens = torch.tensor([self.lengths[s] for s in active], dtype=torch.int32)
        max_q = max(len(new_tokens[s]) for s in active)
        dev = self.device
        meta = AttentionMetadata(torch.cat(slots).to(dev), torch.tensor(cu, dtype=torch.int32, device=dev),
                                 seq_lens.to(dev), self.block_tables[active].to(dev), max_q, int(seq_lens.max()))
        rows = None
        if last_only:
            rows = torch.tensor(cu[1:], device=dev) - 1
            meta.rows_meta = AttentionMetadata(meta.slot_mapping[rows], torch.arange(len(active) + 1, dtype=torch.int32,
                                                                                     device=dev),
                                               meta.seq_lens, meta.block_tables, 1, meta.max_seq_len)
        with torch.inference_mode(), step_context(meta):
            hidden = self.model(torch.cat(ids).to(dev), torch.cat(positions).to(dev), rows)
            return self.model.compute_logits(hidden).cpu()
