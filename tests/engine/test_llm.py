"""End to end on tiny random Llama / Qwen3 checkpoints against HF transformers: greedy tokens, the same
outputs under every scheduling variant, logprobs, prompt logprobs (incl. a cached prefix), n > 1, stop
strings, chat, streaming and abort, and the error branches."""
import asyncio
import gc

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from flagstack.engine.config import EngineConfig, SamplingParams
from flagstack.engine.llm import LLM, AsyncLLM
from tests.engine.test_models import VOCAB, tiny_hf_model
from tests.ops.helpers import gpu_only

STEPS = 32
GREEDY = SamplingParams(temperature=0, max_tokens=STEPS, ignore_eos=True)
CPU = dict(device="cpu", dtype="float32", block_size=4)  # the reference path, on GPU machines too


def cpu_llm(path: str, **kwargs) -> LLM:
    return LLM(path, **{**CPU, **kwargs})


def word_tokenizer() -> PreTrainedTokenizerFast:
    """Token i <-> the word 'w{i}', joined by spaces; a one-line chat template."""
    vocab = {f"w{i}": i for i in range(VOCAB)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="w7")
    fast.chat_template = "{% for m in messages %}w1 {{ m['content'] }} w2 {% endfor %}w4"
    return fast


def prompts_for_test() -> list[list[int]]:
    g = torch.Generator().manual_seed(1)
    shared = torch.randint(8, VOCAB, (12,), generator=g).tolist()
    return [torch.randint(8, VOCAB, (n,), generator=g).tolist() for n in (5, 21, 9)] + \
        [shared + [9, 10, 11], shared + [12, 13]]


@pytest.fixture(scope="module", params=["llama", "qwen3"])
def tiny(request, tmp_path_factory):
    hf = tiny_hf_model(request.param)
    path = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(path)
    word_tokenizer().save_pretrained(path)
    prompts = prompts_for_test()
    with torch.no_grad():
        reference = [hf.generate(torch.tensor([p]), max_new_tokens=STEPS, do_sample=False, eos_token_id=None,
                                 pad_token_id=0)[0, len(p):].tolist() for p in prompts]
    return hf, str(path), prompts, reference


def tokens(outputs) -> list[list[int]]:
    return [o.outputs[0].token_ids for o in outputs]


def test_greedy_matches_hf(tiny):
    hf, path, prompts, reference = tiny
    llm = cpu_llm(path)
    outputs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=STEPS, ignore_eos=True, logprobs=2))
    assert tokens(outputs) == reference
    assert all(o.finished and o.outputs[0].finish_reason == "length" for o in outputs)
    # the chosen tokens' logprobs: HF's log_softmax over the same sequence
    full = prompts[1] + reference[1]
    with torch.no_grad():
        ref_lp = torch.log_softmax(hf(torch.tensor([full])).logits[0].float(), -1)
    out = outputs[1].outputs[0]
    for step, (token, lp) in enumerate(zip(out.token_ids, out.logprobs)):
        assert len(lp) == 2 and token in lp
        assert lp[token] == pytest.approx(float(ref_lp[len(prompts[1]) + step - 1, token]), abs=1e-4)
    assert out.cumulative_logprob == pytest.approx(sum(d[t] for t, d in zip(out.token_ids, out.logprobs)), abs=1e-4)


@pytest.mark.parametrize("variant", [
    dict(enable_prefix_caching=False),
    dict(max_num_batched_tokens=8),  # prompts split into chunks of <= 8, mixed with decode tokens
    dict(enable_chunked_prefill=False, max_num_batched_tokens=24),
    dict(num_kv_blocks=16),  # 64 slots for 5 sequences growing to ~50 tokens: forced preemption
    dict(max_num_seqs=2),
    dict(async_scheduling=True),  # run-ahead: each step launched before the previous one's tokens are read
    dict(async_scheduling=True, num_kv_blocks=16),
    dict(async_scheduling=True, max_num_batched_tokens=8),
])
def test_scheduling_variants_give_the_same_tokens(tiny, variant):
    _, path, prompts, reference = tiny
    llm = cpu_llm(path, **variant)
    assert tokens(llm.generate(prompts, GREEDY)) == reference
    if "num_kv_blocks" in variant:
        assert llm.get_stats()["num_preemptions"] > 0
    assert llm.get_stats()["kv_cache_usage"] == 0.0  # every block released


def mixed_params(stop_word: str, stop_id: int) -> list[SamplingParams]:
    """One request of each kind whose bookkeeping run-ahead delays: stops by token, string and length
    (some after 1-2 tokens), min_tokens, logprobs, seeded sampling with n > 1, penalties."""
    return [
        SamplingParams(temperature=0, max_tokens=STEPS, stop_token_ids=[stop_id]),
        SamplingParams(temperature=0, max_tokens=STEPS, stop=[stop_word]),
        SamplingParams(temperature=0, max_tokens=1, ignore_eos=True),
        SamplingParams(temperature=0, max_tokens=STEPS, min_tokens=6, stop_token_ids=[stop_id], logprobs=1),
        SamplingParams(n=2, temperature=1.0, seed=3, max_tokens=9, ignore_eos=True),
        SamplingParams(temperature=0, max_tokens=7, repetition_penalty=1.5, presence_penalty=0.5, ignore_eos=True),
        SamplingParams(temperature=0, max_tokens=2, ignore_eos=True, logprobs=0),
    ]


def summary(outputs) -> tuple[list, list]:
    """What must match exactly, and the logprobs (batch composition moves them in the last float bits)."""
    exact = [[(c.token_ids, c.text, c.finish_reason, c.stop_reason, [sorted(d) for d in c.logprobs or []])
              for c in o.outputs] for o in outputs]
    floats = [v for o in outputs for c in o.outputs
              for v in [c.cumulative_logprob, *(x for d in c.logprobs or [] for x in d.values())]]
    return exact, floats


@pytest.mark.parametrize("variant", [{}, dict(num_kv_blocks=16), dict(max_num_batched_tokens=8)])
def test_run_ahead_matches_step_by_step(tiny, variant):
    """Every request kind gives the same outputs whether each step waits for the last one's tokens or not,
    run-ahead really happens, and every block comes back."""
    _, path, prompts, reference = tiny
    stop_id = reference[0][4]
    params = mixed_params(f"w{reference[1][3]}", stop_id)
    batch = [prompts[i % len(prompts)] for i in range(len(params))]
    expected, expected_logprobs = summary(cpu_llm(path, **variant).generate(batch, params))
    llm = cpu_llm(path, async_scheduling=True, **variant)
    ran_ahead = []
    step = llm.engine.step
    llm.engine.step = lambda: (step(), ran_ahead.append(llm.engine.inflight is not None))[0]
    got, logprobs = summary(llm.generate(batch, params))
    assert got == expected and logprobs == pytest.approx(expected_logprobs, abs=1e-4)
    assert sum(ran_ahead) >= 2  # not while the penalized request samples: penalties count every token
    assert llm.get_stats()["kv_cache_usage"] == 0.0 and not llm.engine.has_unfinished()


def test_run_ahead_abort_mid_flight(tiny):
    _, path, prompts, reference = tiny
    llm = cpu_llm(path, async_scheduling=True)
    core = llm.engine
    for i, p in enumerate(prompts):
        core.add_request(f"r{i}", p, GREEDY)
    for _ in range(4):
        core.step()
    assert core.inflight is not None and core.abort("r1")  # r1 has a row in the launched step
    done = {}
    while core.has_unfinished():
        for request in core.step():
            done[request.request_id] = request.sequences[0].output_token_ids
    assert {k: v for k, v in done.items() if k != "r1"} == {f"r{i}": reference[i] for i in (0, 2, 3, 4)}
    assert core.blocks.usage == 0.0 and "r1" not in done


def test_batch_of_one_and_prefix_reuse(tiny):
    _, path, prompts, reference = tiny
    llm = cpu_llm(path)
    assert [tokens(llm.generate(p, GREEDY))[0] for p in prompts] == reference
    stats = llm.get_stats()
    assert stats["prompt_tokens_cached"] >= 8  # the 5th prompt reuses the 4th's first two full blocks
    again = llm.generate(prompts, GREEDY)  # everything cached now
    assert tokens(again) == reference and again[1].metrics.num_cached_tokens == 20
    assert llm.get_stats()["prefix_cache_hit_rate"] > stats["prefix_cache_hit_rate"]


def test_prompt_logprobs_vs_hf(tiny):
    hf, path, prompts, _ = tiny
    llm = cpu_llm(path)
    prompt = prompts[1]
    with torch.no_grad():
        ref = torch.log_softmax(hf(torch.tensor([prompt])).logits[0].float(), -1)

    def check(entries, first):
        assert all(e is None for e in entries[:first])
        for p in range(first, len(prompt)):
            assert prompt[p] in entries[p] and len(entries[p]) <= 3
            for token, value in entries[p].items():
                assert value == pytest.approx(float(ref[p - 1, token]), abs=1e-4)
            assert max(entries[p].values()) == pytest.approx(float(ref[p - 1].max()), abs=1e-4)

    full = llm.generate(prompt, SamplingParams(max_tokens=1, prompt_logprobs=2))[0]
    check(full.prompt_logprobs, 1)
    assert full.metrics.num_cached_tokens == 0  # all rows scored: nothing may come from the cache
    tail = llm.generate(prompt, SamplingParams(max_tokens=1, prompt_logprobs=2, prompt_logprobs_from=-3))[0]
    check(tail.prompt_logprobs, len(prompt) - 3)
    assert tail.metrics.num_cached_tokens == 16  # the cached prefix stops before row len - 4
    computed = llm.get_stats()["prompt_tokens_computed"]
    assert computed == 2 * len(prompt) - 16


def test_fp8_kv_cache_scores_close_to_hf_with_twice_the_blocks(tiny):
    hf, path, prompts, _ = tiny
    budget = dict(cpu_kv_cache_bytes=1 << 20, max_num_seqs=1024)
    llm, exact = cpu_llm(path, kv_cache_dtype="fp8", **budget), cpu_llm(path, **budget)
    assert llm.engine.runner.num_blocks == 4 * exact.engine.runner.num_blocks  # 1 byte a value against fp32's 4
    assert llm.engine.runner.k_caches[0].dtype == torch.float8_e4m3fn
    prompt = prompts[1]
    with torch.no_grad():
        ref = torch.log_softmax(hf(torch.tensor([prompt])).logits[0].float(), -1)
    out = llm.generate(prompt, SamplingParams(max_tokens=1, prompt_logprobs=0))[0].prompt_logprobs
    errors = [abs(out[p][prompt[p]] - float(ref[p - 1, prompt[p]])) for p in range(1, len(prompt))]
    assert 1e-6 < max(errors) < 0.05  # e4m3 rounding is visible but small
    greedy = llm.generate(prompts, GREEDY)
    assert all(len(o.outputs[0].token_ids) == STEPS for o in greedy)
    with pytest.raises(ValueError, match="kv_cache_dtype"):
        EngineConfig(kv_cache_dtype="int8")


def test_n_samples_share_the_prompt(tiny):
    _, path, prompts, reference = tiny
    llm = cpu_llm(path)
    out = llm.generate(prompts[1], SamplingParams(n=3, temperature=1.0, seed=5, max_tokens=8, ignore_eos=True))[0]
    assert [c.index for c in out.outputs] == [0, 1, 2] and all(len(c.token_ids) == 8 for c in out.outputs)
    assert len({tuple(c.token_ids) for c in out.outputs}) > 1
    again = llm.generate(prompts[1], SamplingParams(n=3, temperature=1.0, seed=5, max_tokens=8, ignore_eos=True))[0]
    assert [c.token_ids for c in again.outputs] == [c.token_ids for c in out.outputs]
    fresh = cpu_llm(path, enable_prefix_caching=False)
    greedy = fresh.generate(prompts[1], SamplingParams(n=2, temperature=0, max_tokens=STEPS, ignore_eos=True))[0]
    assert [c.token_ids for c in greedy.outputs] == [reference[1]] * 2
    # the sibling computed only the prompt's last partial block (21 tokens: 5 blocks shared, 1 token)
    assert fresh.get_stats()["prompt_tokens_computed"] == 21 + 1


def test_stop_strings_tokens_and_text(tiny):
    _, path, prompts, reference = tiny
    llm = cpu_llm(path)
    out = llm.generate(prompts[0], GREEDY)[0].outputs[0]
    assert out.text == " ".join(f"w{t}" for t in reference[0])
    stop_word = f"w{reference[0][4]}"
    at = out.text.find(stop_word)
    first = next(i for i in range(STEPS) if stop_word in " ".join(f"w{t}" for t in reference[0][:i + 1]))
    cut = llm.generate(prompts[0], SamplingParams(temperature=0, max_tokens=STEPS, stop=[stop_word, "zzz"]))[0]
    c = cut.outputs[0]
    assert c.finish_reason == "stop" and c.stop_reason == stop_word
    assert c.token_ids == reference[0][:first + 1] and c.text == out.text[:at]
    kept = llm.generate(prompts[0], SamplingParams(temperature=0, max_tokens=STEPS, stop=stop_word,
                                                   include_stop_str_in_output=True))[0].outputs[0]
    assert kept.text.endswith(stop_word)
    stop_id = reference[0][4]
    first_id = reference[0].index(stop_id)
    by_id = llm.generate(prompts[0], SamplingParams(temperature=0, max_tokens=STEPS,
                                                    stop_token_ids=[stop_id]))[0].outputs[0]
    assert by_id.token_ids == reference[0][:first_id + 1] and by_id.stop_reason == stop_id
    waited = llm.generate(prompts[0], SamplingParams(temperature=0, max_tokens=STEPS, min_tokens=first_id + 2,
                                                     stop_token_ids=[stop_id]))[0].outputs[0]
    assert len(waited.token_ids) > first_id + 1


def test_logprob_token_ids_vs_hf(tiny):
    hf, path, prompts, _ = tiny
    llm = cpu_llm(path)
    with torch.no_grad():
        ref = torch.log_softmax(hf(torch.tensor([prompts[1]])).logits[0, -1].float(), -1)
    wanted = [5, 40, VOCAB - 1]
    out = llm.generate(prompts[1], SamplingParams(max_tokens=1, logprobs=0, logprob_token_ids=wanted))[0]
    entry = out.outputs[0].logprobs[0]
    for token in wanted:
        assert entry[token] == pytest.approx(float(ref[token]), abs=1e-4)
    with pytest.raises(ValueError, match="logprob_token_ids"):
        SamplingParams(logprob_token_ids=[5])  # without logprobs
    with pytest.raises(ValueError, match="logprob_token_ids"):
        llm.generate(prompts[1], SamplingParams(logprobs=0, logprob_token_ids=[VOCAB]))


def test_chat_and_text_prompts(tiny):
    _, path, _, _ = tiny
    llm = cpu_llm(path)
    by_chat = llm.chat([{"role": "user", "content": "w20 w21"}], GREEDY)[0]
    assert by_chat.prompt_token_ids == [1, 20, 21, 2, 4]
    by_text = llm.generate("w1 w20 w21 w2 w4", GREEDY)[0]
    assert by_text.outputs[0].token_ids == by_chat.outputs[0].token_ids and by_text.prompt == "w1 w20 w21 w2 w4"
    both = llm.chat([[{"role": "user", "content": "w20 w21"}], [{"role": "user", "content": "w30"}]], GREEDY)
    assert len(both) == 2 and both[0].outputs[0].token_ids == by_chat.outputs[0].token_ids
    with pytest.raises(ValueError, match="messages"):
        llm.chat([{"content": "no role"}])


def test_async_streams_deltas_and_abort(tiny):
    _, path, prompts, reference = tiny
    engine = AsyncLLM(path, **CPU)

    async def collect(prompt, request_id):
        return [out async for out in engine.generate(prompt, GREEDY, request_id)]

    async def main():
        streams = await asyncio.gather(collect(prompts[0], "a"), collect(prompts[2], "b"))
        abort_outs = []
        async for out in engine.generate(prompts[1], SamplingParams(temperature=0, max_tokens=30, ignore_eos=True), "c"):
            abort_outs.append(out)
            if len(abort_outs) == 2:
                # On a fast host the engine thread can finish all 30 tokens before the consumer reads
                # two deltas; then there is nothing left to abort (and the next line says so).
                assert engine.abort("c") or engine.engine.requests.get("c") is None
                break
        return streams, abort_outs

    try:
        (a, b), aborted = asyncio.run(main())
        assert [t for out in a for t in out.outputs[0].token_ids] == reference[0]
        assert [t for out in b for t in out.outputs[0].token_ids] == reference[2]
        assert "".join(out.outputs[0].text for out in a) == " ".join(f"w{t}" for t in reference[0])
        assert a[-1].finished and not a[0].finished
        assert len(aborted) == 2 and not engine.abort("c")
        stats = engine.get_stats()
        assert stats["kv_cache_usage"] == 0.0
    finally:
        engine.shutdown()


def test_bad_input(tiny):
    _, path, prompts, _ = tiny
    llm = cpu_llm(path, max_model_len=32)
    for bad, match in ((list(range(40)), "max_model_len"), ([], "prompts"), ([[]], "empty"),
                       ([[VOCAB + 1]], "token ids"), ([1.5], "prompt")):
        with pytest.raises(ValueError, match=match):
            llm.generate(bad, GREEDY)
    with pytest.raises(ValueError, match="params"):
        llm.generate(prompts[:2], [GREEDY])
    long = llm.generate(prompts[1], SamplingParams(temperature=0, max_tokens=100, ignore_eos=True))[0]
    assert long.outputs[0].finish_reason == "length" and len(prompts[1]) + len(long.outputs[0].token_ids) == 32
    for kwargs, match in ((dict(temperature=-1), "temperature"), (dict(top_p=0), "top_p"), (dict(n=0), "n"),
                          (dict(max_tokens=2, min_tokens=3), "min_tokens"), (dict(stop=[""]), "stop")):
        with pytest.raises(ValueError, match=match):
            SamplingParams(**kwargs)
    for kwargs, match in ((dict(block_size=0), "block_size"), (dict(dtype="int8"), "dtype"),
                          (dict(gpu_memory_utilization=1.5), "gpu_memory_utilization")):
        with pytest.raises(ValueError, match=match):
            EngineConfig(**kwargs)
    with pytest.raises(ValueError, match="KV cache too small"):
        cpu_llm(path, cpu_kv_cache_bytes=1024)


def test_cli_generate_and_chat(tiny, capsys, monkeypatch):
    import io

    from flagstack.cli import main

    _, path, prompts, reference = tiny
    common = ["--model", path, "--max-tokens", "3", "--device", "cpu"]
    assert main(["generate", "w20 w21", *common]) == 0
    assert capsys.readouterr().out.startswith("w20 w21w")  # prompt, then the completion
    assert main(["chat", "--message", "w20 w21", *common]) == 0
    one_shot = capsys.readouterr().out
    monkeypatch.setattr("sys.stdin", io.StringIO("w20 w21\n\n/exit\n"))
    assert main(["chat", *common]) == 0
    assert capsys.readouterr().out == one_shot
    assert main(["generate", "w1", *common, "--temperature", "-1"]) == 2  # bad input: exit 2
    assert main(["generate", "w20 w21", *common, "--kv-cache-dtype", "fp8"]) == 0
    assert capsys.readouterr().out.startswith("w20 w21w")
    with pytest.raises(SystemExit) as exit_info:  # argparse: a bad choice names the flag
        main(["generate", "w1", *common, "--kv-cache-dtype", "int8"])
    assert exit_info.value.code == 2 and "--kv-cache-dtype" in capsys.readouterr().err


@gpu_only
@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_cuda_greedy_matches_hf_with_and_without_graphs(arch, tmp_path):
    hf = tiny_hf_model(arch).cuda()
    hf.save_pretrained(tmp_path)
    prompts = prompts_for_test()
    with torch.no_grad():
        reference = [hf.generate(torch.tensor([p], device="cuda"), max_new_tokens=STEPS, do_sample=False,
                                 eos_token_id=None, pad_token_id=0)[0, len(p):].tolist() for p in prompts]
    for eager, run_ahead in ((True, True), (False, True), (False, False)):
        llm = LLM(str(tmp_path), device="cuda", dtype="float32", block_size=16, enforce_eager=eager,
                  max_num_seqs=8, gpu_memory_utilization=0.3, async_scheduling=run_ahead)
        assert bool(llm.engine.runner.graphs) is not eager
        assert tokens(llm.generate(prompts, GREEDY)) == reference
        assert tokens(llm.generate(prompts[0], GREEDY)) == reference[:1]  # graph of a padded batch
        del llm  # its KV cache must go before the next engine measures free memory
        gc.collect()
        torch.cuda.empty_cache()
