"""Start-up warm-up: run a few steps on dummy tokens so that every Triton kernel variant a step can
use is compiled before the first request (a first call of a new variant costs ~1 s on an H100 and
would otherwise land in some request's latency).

What makes a new variant: the constexpr tile sizes, chosen per step. The varlen attention tile height
follows the mean number of new tokens per sequence, so the warm-up prefills prompts of 2, 4, ... 128
new tokens one at a time (every tile height), extends one prompt over its cached prefix, decodes one
token each (eagerly, or through the CUDA graphs captured before) and samples one token at temperature
1. Integer arguments that vary per step are not specialized by the kernels (do_not_specialize), so
these few shapes stand for all sizes. Afterwards every block is free, the prefix cache forgets the
dummy blocks and the statistics start from zero.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from flagstack.engine.config import SamplingParams
from flagstack.engine.kv_cache import CacheStats

if TYPE_CHECKING:
    from flagstack.engine.core import EngineCore

QUERY_LENS = (2, 4, 8, 16, 32, 64, 128)  # new tokens per prefill step: every varlen tile height


def dummy_prompt(length: int, vocab_size: int, salt: int) -> list[int]:
    """Deterministic token ids, different per salt (no accidental prefix sharing between prompts)."""
    return [(salt * 7919 + 31 * i + 1) % vocab_size for i in range(length)]


def warm_up(core: EngineCore) -> None:
    """Run the warm-up requests to completion, then leave the block pool empty and the cache clean."""
    if core.has_unfinished():
        raise RuntimeError("warm_up must run before any request is added")
    blocks = core.blocks
    # every prompt must fit one sequence's context and the pool, with room for one generated token
    longest = min(core.max_model_len, blocks.num_blocks * blocks.block_size) - 2
    lens = sorted({max(1, min(n, longest)) for n in QUERY_LENS})
    greedy = SamplingParams(temperature=0.0, max_tokens=2, ignore_eos=True)
    sampled = SamplingParams(temperature=1.0, max_tokens=2, ignore_eos=True, seed=0)
    prompts = [(dummy_prompt(n, core.vocab_size, salt), greedy) for salt, n in enumerate(lens)]
    # then the longest prompt's cached full blocks plus up to one block of new tokens: an extend step
    longest_prompt = prompts[-1][0]
    cached = (len(longest_prompt) - 1) // blocks.block_size * blocks.block_size
    tail = dummy_prompt(min(blocks.block_size, longest - cached), core.vocab_size, len(prompts))
    prompts.append((longest_prompt[:cached] + tail, sampled))
    for i, (prompt, params) in enumerate(prompts):
        core.add_request(f"warmup-{i}", prompt, params)
        while core.has_unfinished():
            core.step()
    blocks.reset_prefix_cache()
    blocks.stats = CacheStats()
    core.scheduler.num_preemptions = 0
