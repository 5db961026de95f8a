"""Streams many requests through AsyncLLM with the engine in a thread and in a process, and reports the
time per streamed token: wall, the server-side process's CPU (event loop + engine thread, or event loop
+ pipe reader) and the engine process's CPU. The consumer does per delta what the server does (build a
chunk dict, json.dumps it), so the event loop competes with the engine as under `flagstack serve`.

  python scripts/stream_engine_modes.py [MODEL] --streams 100 --tokens 32 --rounds 3
MODEL: an HF directory or GGUF file, 'embedded' for the embedded SmolLM2 (default: a tiny random Llama
written to a temporary directory: steps then cost mostly Python, as a batch of a real model does on a GPU).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time


def process_cpu_s(pid: int, tid: int | None = None) -> float:
    """User + system CPU seconds of a running process, or of one of its threads (from /proc)."""
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    with open(path) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def thread_cpu_s() -> dict[str, float]:
    """CPU seconds of this process's main thread (the event loop) and of the engine's threads, by name."""
    import threading

    return {t.name: process_cpu_s(os.getpid(), t.native_id) for t in threading.enumerate()
            if t is threading.main_thread() or t.name.startswith("flagstack-engine")}


async def stream_all(engine, prompts: list[list[int]], tokens: int, tag: str) -> int:
    from flagstack.engine.config import SamplingParams

    params = SamplingParams(temperature=0, max_tokens=tokens, ignore_eos=True)

    async def one(i: int, prompt: list[int]) -> int:
        n = 0
        async for out in engine.generate(prompt, params, f"{tag}-{i}"):
            for c in out.outputs:  # what the server does per delta: a chunk, serialized
                chunk = {"id": f"{tag}-{i}", "object": "text_completion", "created": 0, "model": "m",
                         "choices": [{"index": c.index, "text": c.text, "logprobs": None,
                                      "finish_reason": c.finish_reason}]}
                json.dumps(chunk)
                n += len(c.token_ids)
        return n

    return sum(await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts))))


def measure(model: str | None, engine_process: bool, streams: int, tokens: int, rounds: int) -> list[dict]:
    from flagstack.engine.llm import AsyncLLM

    engine = AsyncLLM(model, engine_process=engine_process, device="cpu", dtype="float32", block_size=16,
                      max_num_seqs=max(streams, 1), max_model_len=256)
    child = engine._host.process.pid if engine_process else None
    prompts = [[5 + (i * 7 + j) % 80 for j in range(8)] for i in range(streams)]
    rows = []
    try:
        asyncio.run(stream_all(engine, prompts[:4], 4, "warm"))
        for r in range(rounds):
            wall, cpu = time.perf_counter(), time.process_time()
            child_cpu = process_cpu_s(child) if child else 0.0
            threads = thread_cpu_s()
            n = asyncio.run(stream_all(engine, prompts, tokens, f"r{r}"))
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            child_cpu = (process_cpu_s(child) - child_cpu) if child else 0.0
            threads = {k: v - threads.get(k, 0.0) for k, v in thread_cpu_s().items()}
            row = {"mode": "process" if engine_process else "thread", "round": r, "tokens": n,
                   "tok_per_s": n / wall, "wall_us/tok": 1e6 * wall / n, "server_cpu_us/tok": 1e6 * cpu / n}
            row.update({f"{k.replace('flagstack-', '')}_us/tok": 1e6 * v / n for k, v in threads.items()})
            row["engine_proc_cpu_us/tok"] = 1e6 * child_cpu / n
            rows.append(row)
    finally:
        engine.shutdown()
    return rows


def tiny_model_dir() -> str:
    from transformers import LlamaConfig, LlamaForCausalLM

    import torch

    torch.manual_seed(0)
    path = tempfile.mkdtemp(prefix="tiny-llama-")
    LlamaForCausalLM(LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
                     ).save_pretrained(path)
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", nargs="?", default=None)
    p.add_argument("--streams", type=int, default=100)
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    model = None if args.model == "embedded" else args.model or tiny_model_dir()
    print(f"load average {os.getloadavg()[0]:.2f}, {os.cpu_count()} cores", flush=True)
    for _ in range(2):  # thread, process, thread, process: drift of the machine's load shows
        for engine_process in (False, True):
            for row in measure(model, engine_process, args.streams, args.tokens, args.rounds):
                print("  ".join(f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()),
                      flush=True)
    print(f"load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
