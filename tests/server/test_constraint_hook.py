"""The engine's structured-output hook (SamplingParams.constraint_factory) on a tiny random Llama:
one constraint per sequence, masked logits decide the tokens, accept() can stop a sequence, and
reported logprobs stay those of the unmasked model."""
from __future__ import annotations

import pytest
import torch

from flagstack.engine.config import SamplingParams
from flagstack.engine.llm import LLM
from tests.engine.model_helpers import VOCAB, tiny_hf_model


class OnlyToken:
    """Allows one token id; asks to stop after `stop_after` tokens."""

    made = 0

    def __init__(self, token: int, stop_after: int) -> None:
        self.token, self.stop_after, self.seen = token, stop_after, []
        OnlyToken.made += 1

    def mask_logits(self, row: torch.Tensor) -> None:
        keep = row[self.token].clone()
        row.fill_(float("-inf"))
        row[self.token] = keep

    def accept(self, token: int) -> bool:
        self.seen.append(token)
        return len(self.seen) >= self.stop_after


@pytest.fixture(scope="module")
def llm(tmp_path_factory):
    path = tmp_path_factory.mktemp("llama")
    tiny_hf_model("llama").save_pretrained(path)
    return LLM(str(path), device="cpu", dtype="float32", block_size=4)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_constraint_decides_tokens_and_stops(llm, temperature):
    OnlyToken.made = 0
    params = SamplingParams(n=3, temperature=temperature, max_tokens=10, ignore_eos=True, logprobs=1,
                            constraint_factory=lambda: OnlyToken(11, 4))
    free = llm.generate([[9, 10, 12]], SamplingParams(temperature=0, max_tokens=1, logprobs=VOCAB))[0]
    out = llm.generate([[9, 10, 12]], params)[0]
    assert OnlyToken.made == 3  # one per sequence
    for choice in out.outputs:
        assert choice.token_ids == [11] * 4 and choice.finish_reason == "stop"
        assert all(11 in lp and lp[11] < 0 for lp in choice.logprobs)
    # the first step's logprob of token 11 is the model's own (the mask does not renormalise it)
    assert out.outputs[0].logprobs[0][11] == pytest.approx(free.outputs[0].logprobs[0][11], abs=1e-5)


def test_unconstrained_requests_in_the_same_batch_are_untouched(llm):
    greedy = SamplingParams(temperature=0, max_tokens=5, ignore_eos=True)
    alone = llm.generate([[20, 21, 22]], greedy)[0].outputs[0].token_ids
    mixed = llm.generate([[20, 21, 22], [9, 10, 12]],
                         [greedy, SamplingParams(temperature=0, max_tokens=5, ignore_eos=True,
                                                 constraint_factory=lambda: OnlyToken(7, 99))])
    assert mixed[0].outputs[0].token_ids == alone
    assert mixed[1].outputs[0].token_ids == [7] * 5 and mixed[1].outputs[0].finish_reason == "length"
