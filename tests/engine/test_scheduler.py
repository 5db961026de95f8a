"""Scheduler without a model: token budget, chunked prefill, decode priority, max_num_seqs, preemption,
finish/abort freeing blocks, and the prefix-cache limit for prompt logprobs."""
from flagstack.engine.config import EngineConfig, SamplingParams
from flagstack.engine.kv_cache import BlockManager
from flagstack.engine.scheduler import Scheduler
from flagstack.engine.sequence import Status
from tests.engine.test_kv_cache import make_seq


def make_scheduler(num_blocks=64, block_size=4, **kw) -> Scheduler:
    config = EngineConfig(block_size=block_size, **kw)
    return Scheduler(config, BlockManager(num_blocks, block_size, config.enable_prefix_caching))


def run_step(sched: Scheduler) -> list[tuple[int, int]]:
    """One step: schedule, mark computed, and sample a token for finished prompts; (seq_id, n) pairs."""
    batch = sched.schedule()
    sched.commit(batch, sched.after_launch(batch))
    for seq in batch.seqs:
        if seq.num_computed_tokens == len(seq):
            seq.token_ids.append(0)
    return [(s.seq_id, n) for s, n in zip(batch.seqs, batch.num_new_tokens)]


def test_token_budget_and_chunks():
    sched = make_scheduler(max_num_batched_tokens=16)
    a, b, c = (make_seq(list(range(100 + 10 * i, 110 + 10 * i))) for i in range(3))
    for s in (a, b, c):
        sched.add(s)
    assert run_step(sched) == [(a.seq_id, 10), (b.seq_id, 6)]
    # a decodes first, then b's remaining chunk, then c's first chunk
    assert run_step(sched) == [(a.seq_id, 1), (b.seq_id, 4), (c.seq_id, 10)]
    assert run_step(sched) == [(a.seq_id, 1), (b.seq_id, 1), (c.seq_id, 1)]
    assert all(s.status is Status.RUNNING for s in (a, b, c))


def test_no_chunking_waits_for_room_for_whole_prompts():
    sched = make_scheduler(max_num_batched_tokens=16, enable_chunked_prefill=False)
    a, b = make_seq(list(range(10))), make_seq(list(range(20, 30)))
    sched.add(a)
    sched.add(b)
    assert run_step(sched) == [(a.seq_id, 10)]
    assert run_step(sched) == [(a.seq_id, 1), (b.seq_id, 10)]


def test_max_num_seqs():
    sched = make_scheduler(max_num_seqs=2)
    seqs = [make_seq([i, i + 1]) for i in range(3)]
    for s in seqs:
        sched.add(s)
    assert [sid for sid, _ in run_step(sched)] == [seqs[0].seq_id, seqs[1].seq_id]
    sched.finish(seqs[0])
    assert [sid for sid, _ in run_step(sched)] == [seqs[1].seq_id, seqs[2].seq_id]


def test_preemption_frees_newest_and_recomputes_it():
    sched = make_scheduler(num_blocks=4, block_size=2, max_num_batched_tokens=64, enable_prefix_caching=False)
    old, new = make_seq([1, 2, 3]), make_seq([4, 5, 6])
    sched.add(old)
    sched.add(new)
    run_step(sched)  # 4 blocks used: 2 each
    assert sched.blocks.num_free_blocks == 0
    run_step(sched)  # the sampled tokens still fit: 4 computed tokens each, 5 known
    assert run_step(sched) == [(old.seq_id, 1)]  # old needs a 3rd block: new is preempted
    assert new.status is Status.WAITING and new.block_table == [] and new.num_preemptions == 1
    assert sched.waiting[0] is new and sched.num_preemptions == 1
    sched.finish(old)
    assert sched.blocks.num_free_blocks == 4
    assert run_step(sched) == [(new.seq_id, 5)]  # prompt + its sampled tokens, recomputed


def test_preempts_itself_when_alone():
    sched = make_scheduler(num_blocks=2, block_size=2, enable_prefix_caching=False)
    seq = make_seq([1, 2, 3, 4])
    sched.add(seq)
    run_step(sched)
    assert run_step(sched) == [] and seq.status is Status.WAITING


def test_finish_frees_blocks_of_waiting_and_running():
    sched = make_scheduler(max_num_batched_tokens=8)
    a, b = make_seq(list(range(8))), make_seq(list(range(8)))
    sched.add(a)
    sched.add(b)
    run_step(sched)
    sched.finish(a)
    sched.finish(b)
    assert not sched.has_unfinished() and sched.blocks.num_free_blocks == 64


def test_prefix_cache_stops_before_scored_prompt_rows():
    sched = make_scheduler()
    prompt = list(range(20))
    sched.add(warm := make_seq(prompt))
    run_step(sched)
    sched.finish(warm)
    plain = make_seq(prompt)
    scored_tail = make_seq(prompt, SamplingParams(prompt_logprobs=1, prompt_logprobs_from=-3))
    scored_all = make_seq(prompt, SamplingParams(prompt_logprobs=1))
    assert sched.max_cached_tokens(plain) == 19
    assert sched.max_cached_tokens(scored_tail) == 16  # token 17 is scored by the logits at 16
    assert sched.max_cached_tokens(scored_all) == 0
    for seq, cached in ((plain, 16), (scored_tail, 16), (scored_all, 0)):
        sched.add(seq)
        run_step(sched)
        assert seq.num_cached_tokens == cached
    scored_tail.request.prompt_logprobs_done = True  # e.g. after preemption: no limit any more
    assert sched.max_cached_tokens(scored_tail) == len(scored_tail) - 1


def test_equal_prompts_wait_for_the_prefix_in_flight():
    sched = make_scheduler(max_num_batched_tokens=64)
    prompt = list(range(30))
    a, b, c = make_seq(prompt), make_seq(prompt + [1]), make_seq([7] * 9)
    for s in (a, b, c):
        sched.add(s)
    assert run_step(sched) == [(a.seq_id, 30), (c.seq_id, 9)]  # b passed over, c admitted
    assert run_step(sched) == [(a.seq_id, 1), (c.seq_id, 1), (b.seq_id, 3)]  # 28 tokens from the cache
    assert b.num_cached_tokens == 28 and sched.blocks.stats.prompt_tokens_computed == 30 + 9 + 3
