"""Sampling: greedy = argmax, filters keep exactly the hand-computed sets, frequencies match the filtered
distribution (chi-square), the Triton kernel and the reference pick the same tokens from the same seed."""
import pytest
import torch
from scipy.stats import chi2

from flagstack.ops import compute_logprobs, sample, sampling
from flagstack.ops.sampling import _top_values, sample_reference, sample_triton
from tests.ops.helpers import DEVICE, ON_GPU, gpu_only

PROBS = torch.tensor([0.5, 0.3, 0.15, 0.05])
IMPLS = [pytest.param(sample_reference, id="reference"), pytest.param(sample_triton, id="triton")]


def _draw(impl, logits: torch.Tensor, n: int, seed: int = 0, **params) -> torch.Tensor:
    """Token counts over n independent draws from the same logits row."""
    batch = logits.to(DEVICE).expand(n, -1).contiguous()
    tokens = impl(batch, generator=torch.Generator(DEVICE).manual_seed(seed), **params)
    return torch.bincount(tokens.cpu(), minlength=logits.shape[-1])


@pytest.mark.parametrize("impl", IMPLS if ON_GPU else IMPLS[:1])  # on CPU triton == reference is tested below
@pytest.mark.parametrize("params, kept", [
    (dict(top_k=2), {0, 1}),
    (dict(top_p=0.7), {0, 1}),  # mass before each token: 0, .5, .8 -> the first two are below .7
    (dict(top_p=0.85), {0, 1, 2}),
    (dict(min_p=0.2), {0, 1, 2}),  # p >= 0.2 * 0.5
    (dict(top_k=3, top_p=0.8), {0, 1}),  # top-p over the renormalized top 3: .53, .32, .16
    (dict(top_k=1, temperature=5.0), {0}),
    (dict(temperature=0.0, top_k=3), {0}),
    (dict(top_k=0, top_p=1.0, min_p=0.0), {0, 1, 2, 3}),  # every filter off
])
def test_filters_keep_exactly(impl, params, kept):
    counts = _draw(impl, PROBS.log(), 400, **params)
    assert {i for i, c in enumerate(counts.tolist()) if c > 0} == kept


def _filtered_distribution(logits: torch.Tensor, t: float, k: int, p: float, min_p: float) -> torch.Tensor:
    """HF's order, written plainly: top-k, top-p over the renormalized survivors, min-p."""
    probs = torch.softmax(logits.double() / t, -1)
    order = probs.argsort(descending=True)
    keep = torch.zeros_like(probs, dtype=torch.bool)
    keep[order[:k]] = True
    survivors = torch.where(keep, probs, 0.0)
    survivors /= survivors.sum()
    mass_before = 0.0
    for i in order[:k].tolist():
        if mass_before >= p:
            keep[i] = False
        mass_before += survivors[i].item()
    keep &= probs >= min_p * probs.max()
    final = torch.where(keep, probs, 0.0)
    return final / final.sum()


@pytest.mark.parametrize("impl", [IMPLS[0]] + ([IMPLS[1]] if ON_GPU else []))
def test_frequencies_match_filtered_distribution(impl):
    logits = torch.randn(40, generator=torch.Generator().manual_seed(3)) * 2
    expected = _filtered_distribution(logits, 0.8, 25, 0.9, 0.03)
    n = 20000
    counts = _draw(impl, logits, n, temperature=0.8, top_k=25, top_p=0.9, min_p=0.03).double()
    kept = expected > 0
    assert 2 < int(kept.sum()) < 25, "every filter should bite on this row"
    assert counts[~kept].sum() == 0
    stat = (((counts - n * expected)[kept]) ** 2 / (n * expected[kept])).sum().item()
    assert stat < chi2.ppf(0.9999, int(kept.sum()) - 1), stat


@pytest.mark.parametrize("rows, vocab", [(3, 700), (18, 300)] + ([(1, 151936), (256, 151936)] if ON_GPU else []))
def test_triton_matches_reference_token_for_token(rows, vocab):
    """3 rows < 4 x the 4 SMs assumed on CPU: rows split over programs; 18 rows: one program per row."""
    logits = torch.randn(rows, vocab, device=DEVICE, dtype=torch.bfloat16) * 3
    logits[0, 5] = logits[0, 9] = 50  # greedy tie: the first index
    params = dict(temperature=[0.0, 0.7, 1.3] * (rows // 3) + [1.0] * (rows % 3),
                  top_k=[0, 50, 0] * (rows // 3) + [0] * (rows % 3),
                  top_p=[1.0, 0.95, 0.8] * (rows // 3) + [1.0] * (rows % 3),
                  min_p=[0.0, 0.0, 0.05] * (rows // 3) + [0.0] * (rows % 3))
    a = sample_triton(logits, generator=torch.Generator(DEVICE).manual_seed(7), **params)
    b = sample_reference(logits, generator=torch.Generator(DEVICE).manual_seed(7), **params)
    assert a.dtype == torch.int64 and a.shape == (rows,)
    assert torch.equal(a, b)
    if rows >= 3:
        assert a[0].item() == 5


# the last row's threshold is its k-th largest logit alone (no top-p, no min-p, no ties)
FUSED_PARAMS = dict(temperature=[0.0, 0.7, 1.3, 1.0, 0.9, 1.0], top_k=[0, 8, 5, 0, 1, 8],
                    top_p=[1.0, 0.95, 0.8, 1.0, 0.5, 1.0], min_p=[0.0, 0.0, 0.05, 0.1, 0.0, 0.0])


@pytest.mark.parametrize("params, k_max", [
    (FUSED_PARAMS, 8),  # as many rounds as candidates (8)
    ({**FUSED_PARAMS, "top_k": [0, 6, 5, 0, 1, 6]}, 6),  # 6 rounds of 8 candidates: the rest stay -inf
    (dict(temperature=0.8, top_k=0, top_p=1.0, min_p=0.1), 0),  # min-p alone: one round (the row max)
])
def test_fused_thresholds_equal_torch_path(monkeypatch, params, k_max):
    """Host-known filters with top-k <= K_MAX take the candidate kernels (no torch.topk, no sync),
    which run only as many rounds as the largest top-k: same thresholds as the torch path (here
    128-wide slices: 3 per row), same tokens. One slice per row is the path of the short rows in
    test_greedy_is_argmax_and_seeds_reproduce."""
    monkeypatch.setattr(sampling, "CHUNK", 128)
    logits = torch.randn(6, 300, device=DEVICE) * 3
    logits[1, 100:130] = logits[1].max()  # ties at the top: k-th value and top-p inside a tie run
    fused = sampling._fused_params(logits, **params)
    assert fused is not None and fused[1] == k_max
    got = sampling._fused_thresholds(logits, *fused)
    dtypes = dict(temperature=torch.float32, top_k=torch.int64, top_p=torch.float32, min_p=torch.float32)
    rows = [sampling._row_param(name, params[name], 6, 0, dtype, logits.device) for name, dtype in dtypes.items()]
    expected = sampling._thresholds(logits, *rows)
    sampled = rows[0] > 0
    torch.testing.assert_close(got[sampled], expected[sampled], rtol=1e-6, atol=0)
    a = sample_triton(logits, **params, generator=torch.Generator(DEVICE).manual_seed(3))
    b = sample_reference(logits, **params, generator=torch.Generator(DEVICE).manual_seed(3))
    assert torch.equal(a, b)


@gpu_only
@pytest.mark.parametrize("rows", [1, 256])
def test_fused_path_qwen3_defaults_full_vocab(rows):
    """The benchmark's case (T 0.6, top-k 20, top-p 0.95) on Qwen3's vocab: same tokens as the reference."""
    logits = torch.randn(rows, 151936, device=DEVICE, dtype=torch.bfloat16) * 4
    assert sampling._fused_params(logits, 0.6, 20, 0.95, 0.0) is not None
    a = sample_triton(logits, 0.6, 20, 0.95, 0.0, generator=torch.Generator(DEVICE).manual_seed(5))
    b = sample_reference(logits, 0.6, 20, 0.95, 0.0, generator=torch.Generator(DEVICE).manual_seed(5))
    assert torch.equal(a, b)


def test_fused_path_only_where_it_applies():
    logits = torch.randn(2, 300, device=DEVICE)
    assert sampling._fused_params(logits, 0.7, 20, 0.9, 0.0)[1] == 20
    assert sampling._fused_params(logits, [0.0, 0.0], 20, 0.9, 0.0) is None  # all greedy: argmax
    assert sampling._fused_params(logits, 0.7, 0, 0.9, 0.0) is None  # top-p without top-k: full sort
    assert sampling._fused_params(logits, 0.7, sampling.K_MAX + 1, 1.0, 0.0) is None
    assert sampling._fused_params(logits, torch.tensor([0.7, 0.7]), 20, 0.9, 0.0) is None  # device values
    assert sampling._fused_params(logits, 0.7, 300, 1.0, 0.1)[1] == 0  # k >= vocab is no top-k


def test_greedy_is_argmax_and_seeds_reproduce():
    logits = torch.randn(4, 64, device=DEVICE)
    assert torch.equal(sample_triton(logits, 0.0), torch.argmax(logits, -1))
    strided = torch.randn(64, 4, device=DEVICE).t()
    assert torch.equal(sample_triton(strided, 0.0), torch.argmax(strided, -1))
    one = sample_triton(logits[:1], 1.0, seeds=[11])
    assert torch.equal(sample_triton(logits[:2], 1.0, seeds=torch.tensor([11, 12]))[:1], one)
    draws = {tuple(sample_reference(logits, 1.0, seeds=[s] * 4).tolist()) for s in range(6)}
    assert len(draws) > 1, "different seeds should give different tokens"
    assert sample_triton(torch.empty(0, 5, device=DEVICE), 1.0).shape == (0,)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_chunked_top_values_equal_topk(dtype):
    """The two-stage top-k used on CUDA (here with 64-wide chunks) gives torch.topk's values exactly."""
    x = torch.randn(3, 1000, dtype=dtype, device=DEVICE)
    x[0, :300] = x[0, 7]  # ties across chunks
    for k in (1, 5, 8):
        assert torch.equal(_top_values(x, k, chunk=64), torch.topk(x, k).values.float())
    assert torch.equal(_top_values(x, 40, chunk=64), torch.topk(x, 40).values.float())  # k too big: one stage


def test_compute_logprobs():
    logits = torch.randn(3, 20)
    ids = torch.tensor([1, 7, 19])
    chosen, top_values, top_ids = compute_logprobs(logits, ids, top_n=2)
    expected = torch.log_softmax(logits, -1)
    torch.testing.assert_close(chosen, expected[torch.arange(3), ids])
    torch.testing.assert_close(top_values, expected.topk(2, -1).values)
    assert torch.equal(top_ids, expected.topk(2, -1).indices)
    assert compute_logprobs(logits, ids)[1] is None
    with pytest.raises(ValueError, match="top_n"):
        compute_logprobs(logits, ids, top_n=21)
    with pytest.raises(ValueError, match="token_ids must have one id"):
        compute_logprobs(logits, ids[:2])


@pytest.mark.parametrize("kwargs, message", [
    (dict(temperature=-1.0), "temperature must be >= 0"),
    (dict(top_p=0.0), "top_p must be in"),
    (dict(min_p=[0.0, 1.5]), "min_p must be in"),
    (dict(top_k=[1, 2, 3]), "top_k must have 2 values"),
    (dict(temperature=torch.ones(3)), "temperature must be a scalar or have shape"),
    (dict(seeds=[1]), "seeds must have one seed per row"),
    (dict(seeds=[1, 2], generator=torch.Generator()), "either generator or seeds"),
])
def test_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        sample(torch.randn(2, 5), **kwargs)


def test_logits_errors():
    with pytest.raises(ValueError, match="logits must have 2"):
        sample(torch.randn(5))
    with pytest.raises(ValueError, match="non-empty vocab"):
        sample(torch.randn(2, 0))
    with pytest.raises(ValueError, match="logits must have dtype"):
        sample(torch.randint(0, 3, (2, 5)))
