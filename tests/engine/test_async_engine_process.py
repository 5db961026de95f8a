"""AsyncLLM with the engine in a child process, on a tiny random Llama: streams equal HF's greedy tokens,
errors travel back (a bad request is the same ValueError), abort and early exit free the KV cache across
the process boundary, constraint factories travel, an engine failure or a killed child reaches every
waiting stream, and the child exits on shutdown and when its parent dies (the server's SIGTERM test checks
that a drained server's engine process exits too)."""
import asyncio
import os
import signal
import time

import pytest
import torch

from flagstack.engine.config import SamplingParams
from flagstack.engine.engine_process import exit_when_orphaned
from flagstack.engine.llm import AsyncLLM
from tests.engine.test_llm import prompts_for_test, tiny_hf_model, word_tokenizer

CPU = dict(device="cpu", dtype="float32", block_size=4)
GREEDY = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True, logprobs=2)


class OnlyToken:
    """A picklable constraint_factory: every sampled token is `token`; stops after `stop_after` tokens."""

    def __init__(self, token: int, stop_after: int) -> None:
        self.token, self.stop_after = token, stop_after

    def __call__(self):
        return _OnlyTokenState(self.token, self.stop_after)


class _OnlyTokenState:
    def __init__(self, token: int, stop_after: int) -> None:
        self.token, self.stop_after, self.seen = token, stop_after, 0

    def mask_logits(self, row: torch.Tensor) -> None:
        keep = row[self.token].clone()
        row.fill_(float("-inf"))
        row[self.token] = keep

    def accept(self, token: int) -> bool:
        self.seen += 1
        return self.seen >= self.stop_after


class Exploding:
    """A constraint_factory whose constraint fails inside the engine's step."""

    def __call__(self):
        return self

    def mask_logits(self, row: torch.Tensor) -> None:
        raise RuntimeError("boom in the sampler")

    def accept(self, token: int) -> bool:
        return False


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny Llama checkpoint with a word tokenizer, and HF's greedy tokens for three prompts."""
    hf = tiny_hf_model("llama")
    path = tmp_path_factory.mktemp("llama")
    hf.save_pretrained(path)
    word_tokenizer().save_pretrained(path)
    prompts = prompts_for_test()[:3]
    with torch.no_grad():
        reference = [hf.generate(torch.tensor([p]), max_new_tokens=GREEDY.max_tokens, do_sample=False,
                                 eos_token_id=None, pad_token_id=0)[0, len(p):].tolist() for p in prompts]
    return str(path), prompts, reference


@pytest.fixture(scope="module")
def engine(tiny):
    engine = AsyncLLM(tiny[0], engine_process=True, **CPU)
    yield engine
    engine.shutdown()
    assert engine._host.process.exitcode == 0  # left by the shutdown message, not killed


async def collect(engine, prompt, params=GREEDY, request_id=None):
    return [out async for out in engine.generate(prompt, params, request_id)]


def test_streams_match_hf_greedy(engine, tiny):
    _, prompts, reference = tiny
    assert engine.engine is None and engine.engine_process and engine.vocab_size == 96

    async def main():
        return await asyncio.gather(*(collect(engine, p) for p in prompts))

    for prompt, ref, outs in zip(prompts, reference, asyncio.run(main())):
        assert [t for out in outs for t in out.outputs[0].token_ids] == ref
        assert "".join(out.outputs[0].text for out in outs) == " ".join(f"w{t}" for t in ref)
        assert all(out.prompt_token_ids == prompt for out in outs)
        assert [out.finished for out in outs] == [False] * (len(outs) - 1) + [True]
        assert outs[-1].outputs[0].finish_reason == "length"
        for out in outs:  # greedy: each token is the most likely of its own top logprobs
            for token, lp in zip(out.outputs[0].token_ids, out.outputs[0].logprobs):
                assert lp[token] == max(lp.values())
        m = outs[-1].metrics
        assert m.arrival_time <= m.first_token_time <= m.finished_time


def test_stop_string_text_is_kept_by_the_engine(engine, tiny):
    _, prompts, reference = tiny
    stop = f"w{reference[0][3]}"  # the 4th greedy token's word
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True, stop=[stop])
    outs = asyncio.run(collect(engine, prompts[0], params))
    words = [f"w{t}" for t in reference[0]]
    expected = " ".join(words[:words.index(stop)])  # the text before the first occurrence of the stop word
    assert "".join(out.outputs[0].text for out in outs).rstrip() == expected
    assert outs[-1].outputs[0].finish_reason == "stop" and outs[-1].outputs[0].stop_reason == stop


def test_bad_requests_raise_value_error_and_the_engine_keeps_serving(engine, tiny):
    _, prompts, reference = tiny
    for prompt, match in (([10 ** 6], "token ids"), (list(range(8, 90)), "max_model_len"), ([], "empty"),
                          ([1.5], "prompt")):
        with pytest.raises(ValueError, match=match):
            asyncio.run(collect(engine, prompt))
    with pytest.raises(ValueError, match="constraint_factory must pickle"):
        asyncio.run(collect(engine, prompts[0], SamplingParams(constraint_factory=lambda: None)))

    async def same_id_twice():
        first = engine.generate(prompts[0], GREEDY, "dup")
        head = await first.__anext__()
        with pytest.raises(ValueError, match="already running"):
            await collect(engine, prompts[1], request_id="dup")
        rest = [out async for out in first]  # the first request is untouched by the rejected one
        return [head, *rest]

    outs = asyncio.run(same_id_twice())
    assert [t for out in outs for t in out.outputs[0].token_ids] == reference[0]
    assert engine.error is None


def test_abort_and_early_exit_free_the_kv_cache(engine, tiny):
    _, prompts, _ = tiny
    long = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True)

    async def main():
        aborted = []
        async for out in engine.generate(prompts[1], long, "abort-me"):
            aborted.append(out)
            if len(aborted) == 2:
                assert await asyncio.to_thread(engine.abort, "abort-me")  # a blocking call: off the loop
        async for out in engine.generate(prompts[2], long, "leaver"):
            break  # the consumer leaves: generate's cleanup aborts the request
        return aborted

    aborted = asyncio.run(main())
    assert aborted[-1].finished and aborted[-1].outputs[0].finish_reason == "abort"
    assert sum(len(out.outputs[0].token_ids) for out in aborted) < long.max_tokens
    assert not engine.abort("abort-me")  # already gone
    deadline = time.monotonic() + 30
    while (stats := engine.get_stats())["num_requests_running"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert stats["kv_cache_usage"] == 0.0 and stats["num_requests_waiting"] == 0
    assert stats["num_requests_running"] == 0


def test_constraint_factory_travels_to_the_engine_process(engine, tiny):
    _, prompts, _ = tiny
    params = SamplingParams(n=2, temperature=1.0, max_tokens=10, ignore_eos=True, constraint_factory=OnlyToken(11, 4))
    outs = asyncio.run(collect(engine, prompts[0], params))
    tokens = {i: [t for out in outs for c in out.outputs if c.index == i for t in c.token_ids] for i in (0, 1)}
    assert tokens == {0: [11] * 4, 1: [11] * 4}
    assert {c.finish_reason for c in outs[-1].outputs} == {"stop"}


@pytest.mark.parametrize("engine_process", [False, True], ids=["thread", "process"])
def test_engine_failure_reaches_every_waiting_stream(tiny, engine_process):
    path, prompts, _ = tiny
    engine = AsyncLLM(path, engine_process=engine_process, **CPU)
    slow = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True)

    async def main():
        running = engine.generate(prompts[1], slow)
        first = await running.__anext__()  # the failure hits this stream in its middle

        async def rest():
            return [out async for out in running]

        failing = collect(engine, prompts[0], SamplingParams(max_tokens=4, constraint_factory=Exploding()))
        return first, await asyncio.gather(rest(), failing, return_exceptions=True)

    try:
        first, results = asyncio.run(main())
        assert first is not None
        for result in results:
            assert isinstance(result, RuntimeError) and "engine loop has failed" in str(result)
        assert "boom in the sampler" in repr(engine.error) + str(engine.error.__cause__ or "")
        with pytest.raises(RuntimeError, match="failed"):
            asyncio.run(collect(engine, prompts[1]))
        assert engine.abort("anything") is False
    finally:
        engine.shutdown()


def test_killed_engine_process_fails_waiting_streams(tiny):
    path, prompts, _ = tiny
    engine = AsyncLLM(path, engine_process=True, **CPU)

    async def main():
        stream = engine.generate(prompts[0], SamplingParams(temperature=0, max_tokens=40, ignore_eos=True))
        await stream.__anext__()
        os.kill(engine._host.process.pid, signal.SIGKILL)
        async for _ in stream:
            pass

    try:
        with pytest.raises(RuntimeError, match="engine loop has failed"):
            asyncio.run(main())
        assert "exited (code -9)" in str(engine.error)
        with pytest.raises(RuntimeError, match="not running"):
            engine.get_stats()
    finally:
        engine.shutdown()


def test_orphaned_engine_process_exits():
    """The engine process's watchdog, with a forked parent that is killed (no imports: cheap): the orphan exits
    (even in the middle of a long step, when the pipe's end-of-file is not read)."""
    read_end, write_end = os.pipe()
    parent = os.fork()
    if parent == 0:  # the parent to be killed: starts the watcher, then waits
        try:
            watcher = os.fork()
            if watcher == 0:
                try:
                    exit_when_orphaned(os.getppid())
                finally:
                    os._exit(0)
            os.write(write_end, f"{watcher}\n".encode())
            time.sleep(600)
        finally:
            os._exit(0)
    os.close(write_end)
    watcher = int(os.read(read_end, 64))
    os.close(read_end)
    assert process_alive(watcher)
    os.kill(parent, signal.SIGKILL)
    os.waitpid(parent, 0)
    deadline = time.monotonic() + 30
    while process_alive(watcher) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not process_alive(watcher)


def process_alive(pid: int) -> bool:
    """True while the process runs (a zombie waiting to be reaped counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_wire_deltas_rebuild_the_thread_modes_outputs(tiny):
    """At every step, the child's wire delta of each touched request, rebuilt by the parent, equals the
    RequestOutput the thread mode builds from the same state (request_output with a DeltaTracker): samples
    (n > 1, finishing apart), logprobs, prompt logprobs, stop-string text, metrics, and an abort's final output.
    In process, stepping with run-ahead as on CUDA."""
    from flagstack.engine.engine_process import ParentStream, Sent, delta
    from flagstack.engine.llm import build_engine
    from flagstack.engine.outputs import DeltaTracker, request_output

    path, prompts, reference = tiny
    core = build_engine(path, async_scheduling=True, **CPU)
    cases = {
        "greedy": (prompts[0], GREEDY),
        "samples": (prompts[1], SamplingParams(n=3, temperature=1.0, seed=1, max_tokens=9, logprobs=1,
                                               prompt_logprobs=2, stop_token_ids=[reference[1][2]])),
        "stop": (prompts[2], SamplingParams(temperature=0, max_tokens=12, ignore_eos=True,
                                            stop=[f"w{reference[2][4]}"])),
        "aborted": (prompts[2][:-1], SamplingParams(temperature=0, max_tokens=30, ignore_eos=True, logprobs=0)),
    }
    trackers, sent, streams = {}, {}, {}
    for request_id, (prompt, params) in cases.items():
        core.add_request(request_id, prompt, params)
        trackers[request_id] = DeltaTracker(None if params.stop_strings else core.tokenizer)
        sent[request_id] = Sent(params.n, bool(params.stop_strings))
        streams[request_id] = ParentStream(None, None, None)

    def check(request, now):
        expected = request_output(request, now, trackers[request.request_id])
        wire = delta(request, sent[request.request_id], now)
        assert streams[request.request_id].output(*wire) == expected
        return expected

    finals, steps = {}, 0
    while core.has_unfinished():
        touched = core.step()
        now = time.time()
        for request in touched:
            out = check(request, now)
            if out.finished:
                finals[out.request_id] = out
        steps += 1
        if steps == 4:
            request = core.requests["aborted"]
            assert core.abort("aborted")
            finals["aborted"] = check(request, time.time())
    reasons = {rid: [c.finish_reason for c in out.outputs] for rid, out in finals.items()}
    assert reasons["greedy"] == ["length"] and reasons["stop"] == ["stop"] and reasons["aborted"] == ["abort"]
    assert len(reasons["samples"]) == 3
    assert finals["stop"].outputs[0].stop_reason == f"w{reference[2][4]}"
    assert finals["samples"].prompt_logprobs is not None
    assert all(out.metrics.finished_time is not None for out in finals.values())
