"""Sampler: penalties against hand-computed values, logprobs vs log_softmax, greedy, min_tokens, seeds,
and sampled frequencies vs the filtered distribution (the filters themselves: tests/ops/test_sampling.py)."""
import pytest
import torch

from flagstack.engine.config import SamplingParams
from flagstack.engine.sampler import Sampler, apply_penalties, logprob_dicts
from tests.engine.test_kv_cache import make_seq


def seq_with_output(prompt, output, **params):
    seq = make_seq(prompt, SamplingParams(**params))
    seq.token_ids.extend(output)
    return seq


def test_penalties_hand_computed():
    logits = torch.tensor([[2.0, -1.0, 0.5, 0.0, 1.0]])
    seq = seq_with_output([0, 1], [2, 2], repetition_penalty=2.0, presence_penalty=0.5, frequency_penalty=0.25)
    apply_penalties(logits, [seq])
    # 0: prompt, positive -> 2/2; 1: prompt, negative -> -1*2; 2: output twice -> 0.5/2 - 0.5 - 2*0.25
    expected = torch.tensor([[1.0, -2.0, 0.25 - 0.5 - 0.5, 0.0, 1.0]])
    torch.testing.assert_close(logits, expected)


def test_penalties_per_row_and_off():
    logits = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]])
    rows = [seq_with_output([0], [1], presence_penalty=1.0), seq_with_output([0], [1])]
    apply_penalties(logits, rows)
    torch.testing.assert_close(logits, torch.tensor([[1.0, 0.0, 1.0], [1.0, 1.0, 1.0]]))


def test_sampled_frequencies_match_filtered_distribution():
    logits = torch.log(torch.tensor([[0.4, 0.3, 0.2, 0.1]])).repeat(4000, 1)
    seqs = [make_seq([0], SamplingParams(temperature=1.0, top_k=3))] * 4000
    out = Sampler(torch.Generator().manual_seed(0))(logits, seqs, eos_token_ids=[])
    freq = torch.bincount(torch.tensor(out.token_ids), minlength=4).float() / 4000
    expected = torch.tensor([4, 3, 2, 0]) / 9
    assert freq[3] == 0
    assert (freq - expected).abs().max() < 0.03  # ~4 standard deviations at n=4000


def test_greedy_logprobs_and_min_tokens():
    torch.manual_seed(0)
    logits = torch.randn(3, 10)
    logits[:, 7] = 10.0  # token 7 (eos) wins everywhere
    seqs = [make_seq([1], SamplingParams(temperature=0, logprobs=2)),
            make_seq([1], SamplingParams(temperature=0, min_tokens=1)),
            make_seq([1], SamplingParams(temperature=0, min_tokens=1, stop_token_ids=[4], ignore_eos=True))]
    before = logits.clone()
    out = Sampler(torch.Generator())(logits, seqs, eos_token_ids=[7])
    torch.testing.assert_close(logits, before)  # input not modified
    assert out.token_ids[0] == 7
    assert out.token_ids[1] == int(before[1].index_fill(0, torch.tensor([7]), float("-inf")).argmax())
    assert out.token_ids[2] == 7  # ignore_eos: eos is just a token; stop id 4 is banned instead
    ref = torch.log_softmax(before, -1)
    top2 = ref[0].topk(2)
    assert out.logprobs[0] == pytest.approx(dict(zip(top2.indices.tolist(), top2.values.tolist())))
    assert out.logprobs[1] is None
    assert out.chosen_logprobs == pytest.approx([float(ref[r, t]) for r, t in enumerate(out.token_ids)], abs=1e-6)


def test_logprob_dicts_include_chosen_token():
    lp = torch.log_softmax(torch.tensor([[3.0, 2.0, 1.0, 0.0]]), -1)
    d = logprob_dicts(lp, torch.tensor([3]), [1])[0]
    assert set(d) == {0, 3} and d[3] == pytest.approx(float(lp[0, 3]))
    assert set(logprob_dicts(lp, torch.tensor([0]), [0])[0]) == {0}


def test_per_request_seed_is_reproducible_and_batch_independent():
    logits = torch.zeros(1, 1000)

    def draw(seed, extra_rows):
        seqs = [make_seq([0], SamplingParams(seed=seed))]
        seqs[0].generator = torch.Generator().manual_seed(seed)
        seqs += [make_seq([0], SamplingParams()) for _ in range(extra_rows)]
        sampler = Sampler(torch.Generator().manual_seed(123))
        return [sampler(logits.repeat(len(seqs), 1), seqs, []).token_ids[0] for _ in range(5)]

    assert draw(7, 0) == draw(7, 3)
    assert draw(7, 0) != draw(8, 0)
