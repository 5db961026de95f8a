"""The candidate variants behind the LLM ops' `config=` switches: each one against the same independent
references as the default path."""
import importlib

import pytest
import torch

from flagstack.ops.sampling import SampleConfig, sample_reference, sample_triton
from tests.ops.helpers import DEVICE, DTYPES, assert_close

sampling_module = importlib.import_module("flagstack.ops.sampling")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


FUSED = dict(temperature=[0.0, 0.7, 1.3, 1.0, 0.9], top_k=[0, 8, 5, 0, 1], top_p=[1.0, 0.95, 0.8, 1.0, 0.5],
             min_p=[0.0, 0.0, 0.05, 0.1, 0.0])


@pytest.mark.parametrize("config", [SampleConfig(chunk=128, exact_rounds=True),
                                    SampleConfig(chunk=128, block=64, warps=2, exact_rounds=True, fast_key=True,
                                                 approx_log=True, lanes=2)])
def test_sample_configs_same_thresholds_and_tokens(config):
    """Same thresholds as the torch path (ties at the top included) and the reference's tokens."""
    logits = torch.randn(5, 300, device=DEVICE) * 3
    logits[1, 100:130] = logits[1].max()
    params, k_max = sampling_module._fused_params(logits, **FUSED)
    got = sampling_module._fused_thresholds(logits, params, k_max, config)
    rows = [torch.tensor(v, device=DEVICE) for v in FUSED.values()]
    expected = sampling_module._thresholds(logits, *rows)
    sampled = rows[0] > 0
    torch.testing.assert_close(got[sampled], expected[sampled], rtol=1e-6, atol=0)
    a = sample_triton(logits, **FUSED, generator=torch.Generator(DEVICE).manual_seed(3), config=config)
    b = sample_reference(logits, **FUSED, generator=torch.Generator(DEVICE).manual_seed(3))
    assert torch.equal(a, b)


@pytest.mark.parametrize("rows", [3, 18])
def test_sample_draw_lanes_greedy_ties_nan_and_splits(rows):
    """lanes=4 tiles (and fast_key; approx_log on CUDA): the reference's tokens, the first index of a
    greedy tie, the first NaN of a greedy row; 3 rows split each row over programs on CPU (4 SMs
    assumed), 18 rows take one program per row."""
    logits = torch.randn(rows, 700, device=DEVICE) * 3
    logits[0, 5] = logits[0, 9] = 50
    logits[1, 300], logits[1, 650] = float("nan"), float("nan")
    params = dict(temperature=[0.0, 0.0] + [0.8] * (rows - 2), top_k=[0, 0] + [0] * (rows - 2),
                  top_p=None, min_p=[0.0, 0.0] + [0.05] * (rows - 2))
    config = SampleConfig(block=256, warps=2, lanes=4, fast_key=True, approx_log=True)
    a = sample_triton(logits, **params, generator=torch.Generator(DEVICE).manual_seed(1), config=config)
    b = sample_reference(logits, **params, generator=torch.Generator(DEVICE).manual_seed(1))
    assert a[0].item() == 5 and a[1].item() == 300
    assert torch.equal(a, b)


def test_sample_bitonic_candidates_equal_rounds():
    """tl.topk's network and the rounds give the same sorted candidates (duplicates kept); small
    slices because tl.topk is slow in the interpreter."""
    logits = torch.randn(2, 128, device=DEVICE) * 3
    logits[0, 10:14] = logits[0].max()
    params, k_max = sampling_module._fused_params(logits, 0.8, 4, 0.9, 0.0)
    want = sampling_module._fused_thresholds(logits, params, k_max, SampleConfig(chunk=64))
    got = sampling_module._fused_thresholds(logits, params, k_max, SampleConfig(chunk=64, bitonic=True))
    assert torch.equal(got, want)
