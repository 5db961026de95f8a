"""HF transformers anchors for `bench engine`: the same model run with `generate` in the same process.

Same config (random weights, bf16) for a bundled config, the same files for an HF directory, and the
same GGUF (HF dequantizes it to float32) for a .gguf file. Attention is SDPA, HF's default.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch


def load_hf_model(model: str | None, hf_config, dtype: torch.dtype, device: str) -> torch.nn.Module:
    """The HF counterpart of what the engine loaded from `model` (None: the embedded SmolLM2 GGUF)."""
    from transformers import AutoModelForCausalLM

    from flagstack.engine.loader import embedded_gguf_path

    path = embedded_gguf_path() if model is None else Path(model).expanduser()
    if path.suffix == ".gguf":
        hf = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32,
                                                  attn_implementation="sdpa")
    elif path.is_dir():
        hf = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="sdpa")
    else:  # a bundled config: random weights at HF's own init, built on the device directly
        with torch.device(device):
            hf = AutoModelForCausalLM.from_config(hf_config, dtype=dtype, attn_implementation="sdpa")
    return hf.to(device=device, dtype=dtype).eval().requires_grad_(False)


def left_padded(prompts: list[list[int]], device: str | torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask of prompts left-padded (with id 0) to the longest."""
    width = max(len(p) for p in prompts)
    ids = torch.zeros(len(prompts), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt):] = torch.tensor(prompt)
        mask[row, width - len(prompt):] = 1
    return ids.to(device), mask.to(device)


def hf_generate_s(model: torch.nn.Module, prompts: list[list[int]], new_tokens: int, **generate_kwargs) -> float:
    """Seconds for one greedy `generate` of exactly `new_tokens` per prompt (EOS ignored) as one padded batch."""
    device = next(model.parameters()).device
    ids, mask = left_padded(prompts, device)
    _sync(device)
    start = time.perf_counter()
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens, do_sample=False,
                         eos_token_id=None, pad_token_id=0, **generate_kwargs)
    _sync(device)
    seconds = time.perf_counter() - start
    if out.shape[1] != ids.shape[1] + new_tokens:
        raise RuntimeError(f"HF generate returned {out.shape[1] - ids.shape[1]} new tokens, expected {new_tokens}")
    return seconds


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
