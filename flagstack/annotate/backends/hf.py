"""Hugging Face transformers backend: the speed anchor ("a plain loop of HF calls with the full
prompt per item") and a fallback where the engine is not available.

With `prefix_cache=True` it keeps the KV cache of the previous prompt and reuses its longest common
prefix with the next one (a one-entry prefix cache: enough when every item shares one demo block).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from flagstack.annotate.backends.base import TokenStats, check_distribution_args, check_score_args, common_prefix_len
from flagstack.engine.loader import embedded_gguf_path


def load_hf(model: str | None, dtype: torch.dtype = torch.float32):
    """(tokenizer, model) from a HF directory/name or a GGUF file (None: the embedded SmolLM2)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(model) if model else embedded_gguf_path()
    kwargs = {"gguf_file": path.name} if path.suffix == ".gguf" else {}
    where = str(path.parent) if kwargs else str(model)
    tokenizer = AutoTokenizer.from_pretrained(where, **kwargs)
    lm = AutoModelForCausalLM.from_pretrained(where, dtype=dtype, **kwargs).eval()
    return tokenizer, lm


def _crop(cache, length: int) -> None:
    """Drop cached positions past `length` (transformers 5 crops by a negative count)."""
    extra = cache.get_seq_length() - length
    if extra > 0:
        cache.crop(-extra)


class HFBackend:
    """Scores label sequences and generates text with a transformers causal LM, one prompt at a time."""

    constrains_json = True  # through xgrammar's logits processor

    def __init__(self, model: str | None = None, prefix_cache: bool = False, device: str | None = None,
                 dtype: torch.dtype = torch.float32, loaded=None):
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer, self.model = loaded or load_hf(model, dtype)
        self.model.to(device)
        self.device = device
        self.model_name = f"hf:{Path(model).name}" if model else "hf:given-model" if loaded else "hf:SmolLM2-135M-Instruct.Q4_1.gguf"
        self.prefix_cache = prefix_cache
        self._cached: list[int] = []
        self._cache = None
        self._stats = TokenStats()

    def _prefill(self, prompt: list[int]) -> torch.Tensor:
        """Run the prompt (only past the cached common prefix) and return the last position's logits."""
        from transformers import DynamicCache

        reuse = min(common_prefix_len(self._cached, prompt), len(prompt) - 1) if self.prefix_cache else 0
        if reuse and self._cache is not None:
            _crop(self._cache, reuse)
        else:
            reuse, self._cache = 0, DynamicCache()
        ids = torch.tensor([prompt[reuse:]], device=self.device)
        out = self.model(input_ids=ids, past_key_values=self._cache, use_cache=True)
        self._cached = list(prompt)
        self._stats.requests += 1
        self._stats.prompt_tokens_sent += len(prompt)
        self._stats.prompt_tokens_computed += len(prompt) - reuse
        return out.logits[0, -1].float()

    @torch.inference_mode()
    def score(self, prompts: list[list[int]], candidates: list[list[int]]) -> np.ndarray:
        """Summed log-probability of each candidate after each prompt, [len(prompts), len(candidates)]."""
        check_score_args(prompts, candidates)
        scores = np.zeros((len(prompts), len(candidates)))
        for i, prompt in enumerate(prompts):
            first = torch.log_softmax(self._prefill(prompt), -1)
            for j, cand in enumerate(candidates):
                scores[i, j] = first[cand[0]].item()
                if len(cand) > 1:  # the rest of a multi-token label continues from the prompt's cache
                    ids = torch.tensor([cand[:-1]], device=self.device)
                    logits = self.model(input_ids=ids, past_key_values=self._cache, use_cache=True).logits[0]
                    logp = torch.log_softmax(logits.float(), -1)
                    scores[i, j] += logp[torch.arange(len(cand) - 1), torch.tensor(cand[1:])].sum().item()
                    _crop(self._cache, len(prompt))
                    self._stats.prompt_tokens_sent += len(cand) - 1
                    self._stats.prompt_tokens_computed += len(cand) - 1
        return scores

    @torch.inference_mode()
    def answer_distribution(self, prompts: list[list[int]], k: int) -> list[dict]:
        """The top-k next-token log-probs after each prompt, {token id: log-prob}."""
        check_distribution_args(prompts, k)
        out = []
        for prompt in prompts:
            top = torch.log_softmax(self._prefill(prompt), -1).topk(k)
            out.append(dict(zip(top.indices.tolist(), top.values.tolist())))
        return out

    @torch.inference_mode()
    def generate(self, prompts: list[list[int]], max_tokens: int, json_schema: dict | None = None) -> list[str]:
        """Greedy continuation of each prompt; with a schema, xgrammar keeps the output valid JSON."""
        processors = []
        if json_schema is not None:
            import xgrammar as xgr
            from xgrammar.contrib.hf import LogitsProcessor

            info = xgr.TokenizerInfo.from_huggingface(self.tokenizer, vocab_size=self.model.config.vocab_size)
            grammar = xgr.GrammarCompiler(info).compile_json_schema(json_schema)
        texts = []
        for prompt in prompts:
            if json_schema is not None:
                processors = [LogitsProcessor(grammar)]  # stateful: one per sequence
            ids = torch.tensor([prompt], device=self.device)
            out = self.model.generate(ids, max_new_tokens=max_tokens, do_sample=False, logits_processor=processors,
                                      pad_token_id=self.tokenizer.eos_token_id)
            self._stats.requests += 1
            self._stats.prompt_tokens_sent += len(prompt)
            self._stats.prompt_tokens_computed += len(prompt)
            texts.append(self.tokenizer.decode(out[0, len(prompt):], skip_special_tokens=True))
        self._cached, self._cache = [], None
        return texts

    def stats(self) -> dict:
        return self._stats.as_dict()
