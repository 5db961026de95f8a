"""Backends against an independent reference: log-softmax of one full HF forward over prompt + label,
on a tiny random Llama. The engine backend must agree with it (and hit its prefix cache); the HF
backend with and without its one-entry prefix cache too. The OpenAI backend runs on a fake client."""
import types

import numpy as np
import pytest
import torch

from flagstack.annotate.backends.engine import EngineBackend
from flagstack.annotate.backends.hf import HFBackend
from flagstack.annotate.backends.openai import OpenAIBackend
from tests.annotate.fakes import ByteTokenizer
from tests.engine.model_helpers import tiny_hf_model
from tests.engine.test_llm import word_tokenizer


def _reference(model, prompt, cand) -> float:
    with torch.no_grad():  # on the model's device: an HF-backend test on a GPU moves the shared model there
        logits = model(torch.tensor([prompt + cand], device=model.device)).logits[0].float()
    logp = torch.log_softmax(logits, -1)
    return float(sum(logp[len(prompt) - 1 + k, t] for k, t in enumerate(cand)))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    model = tiny_hf_model("llama", max_position_embeddings=256)
    path = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(path)
    word_tokenizer().save_pretrained(path)
    g = torch.Generator().manual_seed(3)
    shared = torch.randint(8, 96, (40,), generator=g).tolist()
    prompts = [shared + torch.randint(8, 96, (n,), generator=g).tolist() for n in (3, 9, 17)] + [[11, 12, 13]]
    cands = [[20], [21, 22], [23, 24, 25]]
    want = np.array([[_reference(model, p, c) for c in cands] for p in prompts])
    return model, str(path), prompts, cands, want


@pytest.mark.parametrize("prefix_cache", [False, True])
def test_hf_backend_matches_full_forward(tiny, prefix_cache):
    model, _, prompts, cands, want = tiny
    backend = HFBackend(loaded=(word_tokenizer(), model), prefix_cache=prefix_cache)
    np.testing.assert_allclose(backend.score(prompts, cands), want, rtol=1e-4, atol=1e-4)
    stats = backend.stats()
    assert (stats["prompt_tokens_computed"] < stats["prompt_tokens_sent"]) == prefix_cache
    with pytest.raises(ValueError, match="candidates"):
        backend.score(prompts, [[]])


def test_engine_backend_matches_full_forward_and_caches(tiny):
    _, path, prompts, cands, want = tiny
    backend = EngineBackend(path, block_size=4, dtype="float32")
    np.testing.assert_allclose(backend.score(prompts, cands), want, rtol=1e-4, atol=1e-4)
    stats = backend.stats()
    assert stats["requests"] == len(prompts) * len(cands)
    assert stats["cache_hit_rate"] > 0.5  # the 40-token shared prefix is computed once
    assert backend.generate([prompts[0]], 3)[0].startswith("w")


def test_engine_backend_single_token_labels_in_one_sequence_per_item(tiny):
    model, path, prompts, _, _ = tiny
    cands = [[20], [31], [42]]  # one distinct token each: scored from one next-token distribution
    want = np.array([[_reference(model, p, c) for c in cands] for p in prompts])
    backend = EngineBackend(path, block_size=4, dtype="float32")
    np.testing.assert_allclose(backend.score(prompts, cands), want, rtol=1e-4, atol=1e-4)
    stats = backend.stats()
    assert stats["requests"] == len(prompts)
    # sent together, the 40 shared tokens (10 blocks of 4) are computed once: 40 + the three tails + [11, 12, 13]
    assert stats["prompt_tokens_computed"] == 40 + (3 + 9 + 17) + 3


def test_openai_backend_echo_and_choice():
    class Completions:
        def create(self, prompt, echo=False, extra_body=None, **kw):
            if echo:  # one fake token per character, each log-prob -0.5
                lp = types.SimpleNamespace(text_offset=list(range(len(prompt))), token_logprobs=[-0.5] * len(prompt))
                return types.SimpleNamespace(choices=[types.SimpleNamespace(logprobs=lp)],
                                             usage=types.SimpleNamespace(prompt_tokens=len(prompt)))
            return types.SimpleNamespace(choices=[types.SimpleNamespace(text=" banana!")])

    client = types.SimpleNamespace(completions=Completions())
    tok = ByteTokenizer()
    cands = [tok.encode(" apple"), tok.encode(" banana")]
    echo = OpenAIBackend("http://x", "m", tokenizer=tok, client=client)
    np.testing.assert_allclose(echo.score([tok.encode("Q:")], cands), [[-3.0, -3.5]])
    choice = OpenAIBackend("http://x", "m", mode="choice", tokenizer=tok, client=client)
    np.testing.assert_allclose(choice.score([tok.encode("Q:")], cands), [[-20.0, 0.0]])
    with pytest.raises(ValueError, match="mode"):
        OpenAIBackend("http://x", "m", mode="guess", tokenizer=tok, client=client)


def test_answer_distribution_is_the_top_k_of_the_next_token_log_softmax(tiny):
    model, path, prompts, _, _ = tiny
    with torch.no_grad():
        want = []
        for p in prompts:
            top = torch.log_softmax(model(torch.tensor([p], device=model.device)).logits[0, -1].float(), -1).topk(5)
            want.append(dict(zip(top.indices.tolist(), top.values.tolist())))
    for backend in (EngineBackend(path, block_size=4, dtype="float32"), HFBackend(loaded=(word_tokenizer(), model))):
        got = backend.answer_distribution(prompts, 5)
        for g, w in zip(got, want):
            assert set(g) == set(w) and all(isinstance(t, int) for t in g)
            np.testing.assert_allclose([g[t] for t in w], list(w.values()), rtol=1e-4, atol=1e-4)
        with pytest.raises(ValueError, match="k \\(top tokens"):
            backend.answer_distribution(prompts, 0)


def test_openai_backend_answer_distribution():
    class Completions:
        def create(self, prompt, logprobs=None, **kw):
            top = [{}] if prompt == "silent" else [{" red": -0.2, " round": -1.9}]
            lp = types.SimpleNamespace(top_logprobs=top)
            return types.SimpleNamespace(choices=[types.SimpleNamespace(logprobs=lp)],
                                         usage=types.SimpleNamespace(prompt_tokens=len(prompt)))

    tok = ByteTokenizer()
    backend = OpenAIBackend("http://x", "m", tokenizer=tok, client=types.SimpleNamespace(
        completions=Completions(), base_url="http://x"))
    assert backend.answer_distribution([tok.encode("Q:")], 2) == [{" red": -0.2, " round": -1.9}]
    assert backend.stats()["prompt_tokens_sent"] == 2
    with pytest.raises(ValueError, match="no top logprobs"):
        backend.answer_distribution([tok.encode("silent")], 2)
