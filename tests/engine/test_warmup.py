"""Start-up warm-up (runs by itself on CUDA; called by hand here on CPU): it runs prefill steps of every
tile height, an extend over a cached prefix and decode steps, and leaves no trace: an empty block pool,
no cached block a real prompt could hit, zeroed statistics, and the same outputs as an engine without it."""
import pytest

from flagstack.engine.config import SamplingParams
from flagstack.engine.llm import LLM
from flagstack.engine.warmup import QUERY_LENS, dummy_prompt, warm_up
from tests.engine.model_helpers import tiny_hf_model

GREEDY = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("warm")
    tiny_hf_model("llama").save_pretrained(path)  # max_position_embeddings 64
    return str(path)


def record_steps(llm: LLM) -> list[list[tuple[int, int]]]:
    """Wrap the runner so every step's (tokens already computed, new tokens) per sequence is recorded."""
    steps, launch = [], llm.engine.runner.launch

    def recording(batch, eos):
        steps.append([(s.num_computed_tokens, n) for s, n in zip(batch.seqs, batch.num_new_tokens)])
        return launch(batch, eos)
    llm.engine.runner.launch = recording
    return steps


@pytest.mark.parametrize("block_size", [4, 16])
def test_warmup_runs_every_step_kind_and_leaves_the_pool_clean(tiny_dir, block_size):
    llm = LLM(tiny_dir, device="cpu", dtype="float32", block_size=block_size)
    engine, blocks = llm.engine, llm.engine.blocks
    steps = record_steps(llm)
    warm_up(engine)
    prefills = [n for step in steps for c, n in step if c == 0 and n > 1]
    longest = engine.max_model_len - 2  # 62: the tiny model's context bounds the 128-token prompt
    assert sorted(prefills) == sorted({min(n, longest) for n in QUERY_LENS})
    extends = [(c, n) for step in steps for c, n in step if c > 0 and n > 1]
    assert extends and all(c % block_size == 0 for c, _ in extends)  # new tokens over cached full blocks
    assert any(n == 1 for step in steps for _, n in step)  # decode steps
    assert blocks.num_free_blocks == blocks.num_blocks and not any(blocks.ref_count)
    assert blocks.cached == {} and blocks.inflight == {} and all(h is None for h in blocks.hashes)
    assert engine.stats()["prompt_tokens_sent"] == 0 and engine.stats()["num_preemptions"] == 0
    assert not engine.requests and not engine.has_unfinished()

    # a real prompt equal to a warm-up prompt gets no cache hit, and outputs match a fresh engine's
    prompt = dummy_prompt(32, engine.vocab_size, QUERY_LENS.index(32))
    out = llm.generate([prompt], GREEDY)
    assert engine.stats()["prompt_tokens_cached"] == 0
    fresh = LLM(tiny_dir, device="cpu", dtype="float32", block_size=block_size)
    assert out[0].outputs[0].token_ids == fresh.generate([prompt], GREEDY)[0].outputs[0].token_ids
    with pytest.raises(RuntimeError, match="before any request"):
        engine.add_request("busy", prompt, GREEDY)
        warm_up(engine)
