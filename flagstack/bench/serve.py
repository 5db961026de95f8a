"""`flagstack bench serve`: the OpenAI server under Poisson load, against offline LLM.generate.

One seeded request set (token-id prompts of uniform random length, uniform random output lengths,
ignore_eos so every request produces exactly its output length) is run twice:
1. offline: LLM.generate on all requests at once in this process, timed on a second run (the anchor; then freed);
2. online: `flagstack serve` with the same engine flags in a subprocess, fed by streaming clients in
   --client-procs processes whose arrivals are a Poisson process at each rate ('inf': all at once),
   then once more at once with whole (non-streamed) responses; once per --engine-modes entry (the
   engine in a thread of the server, or in its own process), so the two compare in one run.
Per rate: request and output-token throughput, TTFT and TPOT p50/p99, e2e p50, the share of the
offline throughput kept, and the CPU the server process and its engine process used (in cores, over the
row's run: a server process near 1.0 is bound by its GIL). JSON + markdown through bench.common.ResultsFile.
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import os
import random
import subprocess
import sys
import time
from dataclasses import dataclass

COLUMNS = ["mode", "rate", "requests", "duration_s", "req_per_s", "output_tok_per_s", "vs_offline",
           "ttft_p50_ms", "ttft_p99_ms", "tpot_p50_ms", "tpot_p99_ms", "e2e_p50_s", "failed", "server_cpu",
           "engine_proc_cpu"]


@dataclass
class BenchRequest:
    prompt: list[int]
    output_len: int


def make_requests(n: int, input_lens: tuple[int, int], output_lens: tuple[int, int], vocab: int,
                  seed: int) -> list[BenchRequest]:
    """n requests, lengths uniform in the given inclusive ranges, prompt ids uniform over the vocab."""
    rng = random.Random(seed)
    return [BenchRequest([rng.randrange(vocab) for _ in range(rng.randint(*input_lens))], rng.randint(*output_lens))
            for _ in range(n)]


def arrival_times(n: int, rate: float, seed: int) -> list[float]:
    """Send times (s from start) of a Poisson process of `rate` requests/s; all zero for rate inf."""
    if math.isinf(rate):
        return [0.0] * n
    rng = random.Random(seed)
    t, out = 0.0, []
    for _ in range(n):
        out.append(t)
        t += rng.expovariate(rate)
    return out


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (q in [0, 100]); NaN for no values."""
    if not values:
        return float("nan")
    s = sorted(values)
    pos = (len(s) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def offline_throughput(llm, requests: list[BenchRequest]) -> dict:
    """LLM.generate on every request at once, timed on its second run: the anchor row.

    The first run compiles what the workload needs (Triton variants of new step shapes); the server's
    engine, started later, loads them from Triton's disk cache, so a one-run anchor counted compile time
    the server rows never pay."""
    from flagstack.engine.config import SamplingParams

    params = [SamplingParams(max_tokens=r.output_len, ignore_eos=True, temperature=1.0) for r in requests]
    llm.generate([r.prompt for r in requests], params)
    start = time.perf_counter()
    outs = llm.generate([r.prompt for r in requests], params)
    seconds = time.perf_counter() - start
    tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    return {"mode": "offline LLM.generate", "rate": "-", "requests": len(requests), "duration_s": seconds,
            "req_per_s": len(requests) / seconds, "output_tok_per_s": tokens / seconds, "vs_offline": 1.0,
            "failed": len(requests) - sum(len(o.outputs[0].token_ids) == r.output_len
                                          for o, r in zip(outs, requests))}


async def one_request(client, model_name: str, req: BenchRequest, delay: float, index: int,
                      stream: bool = True) -> dict:
    """One completion, streamed (times of send, first chunk, end, and the token count from usage) or whole
    (no first-chunk time)."""
    await asyncio.sleep(delay)
    body = {"model": model_name, "prompt": req.prompt, "max_tokens": req.output_len, "ignore_eos": True,
            "temperature": 1.0, "stream": stream, **({"stream_options": {"include_usage": True}} if stream else {})}
    sent = time.perf_counter()
    first, tokens, ok = None, 0, False
    try:
        if not stream:
            response = await client.post("/v1/completions", json=body)
            end = time.perf_counter()
            tokens = response.json()["usage"]["completion_tokens"]
            return {"sent": sent, "first": end, "end": end, "tokens": tokens, "ok": tokens == req.output_len}
        async with client.stream("POST", "/v1/completions", json=body) as response:
            async for line in response.aiter_lines():
                if not line.startswith("data: "):
                    continue
                if line == "data: [DONE]":
                    ok = True
                    break
                chunk = json.loads(line[6:])
                if chunk.get("choices") and first is None:
                    first = time.perf_counter()
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
    except Exception as err:  # noqa: BLE001 - a failed request is counted, not fatal to the sweep
        print(f"request {index} failed: {err}", file=sys.stderr)
    return {"sent": sent, "first": first, "end": time.perf_counter(), "tokens": tokens,
            "ok": ok and first is not None and tokens == req.output_len}


async def _client_part(url: str, model_name: str, requests: list[BenchRequest], start: float,
                       times: list[float], indices: list[int], stream: bool) -> list[dict]:
    """One client process's share: each request sent at `start` + its arrival time (a shared monotonic clock)."""
    import httpx

    limits = httpx.Limits(max_connections=len(requests), max_keepalive_connections=len(requests))
    async with httpx.AsyncClient(base_url=url, timeout=None, limits=limits) as client:
        now = time.perf_counter()
        return await asyncio.gather(*(one_request(client, model_name, r, max(0.0, start + t - now), i, stream)
                                      for r, t, i in zip(requests, times, indices)))


def _client_process(job: tuple) -> list[dict]:
    return asyncio.run(_client_part(*job))


def _ready(_: int) -> None:
    """Warm a client process (imports done, so the timed run does not wait for them)."""
    import httpx  # noqa: F401

    time.sleep(0.2)


def client_pool(procs: int):
    """The client processes: one Python process reading a hundred event streams fell behind the server
    (TTFT and end times then measure the client), so the streams are spread over several."""
    import multiprocessing

    pool = multiprocessing.get_context("spawn").Pool(procs)
    pool.map(_ready, range(procs), chunksize=1)
    return pool


def run_rate(pool, procs: int, url: str, model_name: str, requests: list[BenchRequest], rate: float, seed: int,
             stream: bool = True, engine_mode: str = "") -> dict:
    """Send the requests at Poisson arrivals from the pool's `procs` processes (round-robin); one result row."""
    times = arrival_times(len(requests), rate, seed)
    groups = [list(range(p, len(requests), procs)) for p in range(procs)]
    start = time.perf_counter() + 0.1
    parts = pool.map(_client_process, [(url, model_name, [requests[i] for i in g], start, [times[i] for i in g],
                                        g, stream) for g in groups if g], chunksize=1)
    results = [r for part in parts for r in part]
    done = [r for r in results if r["ok"]]
    duration = max(r["end"] for r in results) - start
    ttft = [1e3 * (r["first"] - r["sent"]) for r in done] if stream else []
    tpot = [1e3 * (r["end"] - r["first"]) / (r["tokens"] - 1) for r in done if r["tokens"] > 1] if stream else []
    mode = ("server" if stream else "server, whole responses") + (f" ({engine_mode})" if engine_mode else "")
    return {"mode": mode, "rate": "inf" if math.isinf(rate) else rate,
            "requests": len(requests),
            "duration_s": duration, "req_per_s": len(done) / duration,
            "output_tok_per_s": sum(r["tokens"] for r in done) / duration,
            "ttft_p50_ms": percentile(ttft, 50), "ttft_p99_ms": percentile(ttft, 99),
            "tpot_p50_ms": percentile(tpot, 50), "tpot_p99_ms": percentile(tpot, 99),
            "e2e_p50_s": percentile([r["end"] - r["sent"] for r in done], 50), "failed": len(results) - len(done)}


def engine_argv(args: argparse.Namespace) -> list[str]:
    """The engine flags of this command, to start `flagstack serve` with the same engine."""
    argv = ["--load-format", args.load_format, "--max-num-seqs", str(args.max_num_seqs),
            "--max-num-batched-tokens", str(args.max_num_batched_tokens), "--block-size", str(args.block_size),
            "--kv-cache-dtype", args.kv_cache_dtype,
            "--gpu-memory-utilization", str(args.gpu_memory_utilization), "--seed", str(args.seed)]
    for flag, value in (("--dtype", args.dtype), ("--device", args.device), ("--max-model-len", args.max_model_len),
                        ("--num-kv-blocks", args.num_kv_blocks)):
        if value is not None:
            argv += [flag, str(value)]
    for flag, on in (("--no-prefix-caching", args.no_prefix_caching), ("--no-chunked-prefill", args.no_chunked_prefill),
                     ("--enforce-eager", args.enforce_eager)):
        if on:
            argv.append(flag)
    return argv


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU seconds of a running process (Linux /proc); 0 without one."""
    if pid is None:
        return 0.0
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def engine_process_of(pid: int) -> int | None:
    """The server's engine process (a multiprocessing spawn child), if it runs one."""
    from pathlib import Path

    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                return int(child)
    return None


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen, timeout_s: float = 900) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise RuntimeError(f"the server did not answer /health within {timeout_s} s")


def run(args: argparse.Namespace) -> None:
    """Offline anchor, then the server at each rate; rows written as they come."""
    import torch

    from flagstack.bench.common import ResultsFile, torch_versions
    from flagstack.engine.llm import LLM
    from flagstack.engine.server.command import engine_kwargs

    llm = LLM(args.model, **engine_kwargs(args))
    requests = make_requests(args.num_requests, tuple(args.input_len), tuple(args.output_len),
                             llm.engine.vocab_size, args.seed)
    meta = {"model": args.model or "embedded SmolLM2-135M", "load_format": args.load_format,
            "num_requests": args.num_requests, "input_len": f"uniform[{args.input_len[0]}, {args.input_len[1]}]",
            "output_len": f"uniform[{args.output_len[0]}, {args.output_len[1]}] (ignore_eos)",
            "arrivals": f"Poisson, seed {args.seed}", "sampling": "temperature 1.0, unseeded",
            "engine": " ".join(engine_argv(args)), "client processes": args.client_procs,
            "server engine modes": ", ".join(args.engine_modes), **torch_versions()}
    results = ResultsFile("serve", meta, key=("mode", "rate"), out_dir=args.out_dir, columns=COLUMNS)
    anchor = offline_throughput(llm, requests)
    results.add(anchor)
    print(f"offline: {anchor['output_tok_per_s']:.0f} output tok/s", flush=True)
    del llm
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    pool = client_pool(args.client_procs)
    try:
        for engine_mode in args.engine_modes:
            server_rows(args, engine_mode, pool, requests, anchor, results)
    finally:
        pool.terminate()
    print("wrote " + ", ".join(str(p) for p in results.paths))


def server_rows(args: argparse.Namespace, engine_mode: str, pool, requests: list[BenchRequest], anchor: dict,
                results) -> None:
    """Start `flagstack serve` with the engine in a thread or a process; a row per rate, then whole responses."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "flagstack.cli", "serve", *([args.model] if args.model else []),
                             "--port", str(port), "--served-model-name", "bench", *engine_argv(args),
                             "--engine-process" if engine_mode == "process" else "--no-engine-process"])
    try:
        wait_healthy(url, proc)
        warm = [BenchRequest(r.prompt, 4) for r in requests[:8]]  # first-call compilation / autotuning
        run_rate(pool, args.client_procs, url, "bench", warm, math.inf, args.seed)
        engine_pid = engine_process_of(proc.pid)

        def measured_row(rate: float, stream: bool) -> dict:
            server, engine = cpu_seconds(proc.pid), cpu_seconds(engine_pid)
            row = run_rate(pool, args.client_procs, url, "bench", requests, rate, args.seed, stream, engine_mode)
            row["server_cpu"] = (cpu_seconds(proc.pid) - server) / row["duration_s"]
            row["engine_proc_cpu"] = (cpu_seconds(engine_pid) - engine) / row["duration_s"] if engine_pid else None
            row["vs_offline"] = row["output_tok_per_s"] / anchor["output_tok_per_s"]
            results.add(row)
            return row

        for rate in args.rates:
            row = measured_row(rate, stream=True)
            print(f"{engine_mode}, rate {row['rate']}: {row['output_tok_per_s']:.0f} output tok/s "
                  f"({row['vs_offline']:.0%} of offline), TTFT p50 {row['ttft_p50_ms']:.0f} ms, "
                  f"TPOT p50 {row['tpot_p50_ms']:.1f} ms, failed {row['failed']}, {cpu_note(row)}", flush=True)
        # the same requests at once without streaming: the server's rate without per-token events (nor a
        # client that may lag reading them)
        row = measured_row(math.inf, stream=False)
        print(f"{engine_mode}, whole responses: {row['output_tok_per_s']:.0f} output tok/s "
              f"({row['vs_offline']:.0%} of offline), {cpu_note(row)}", flush=True)
    finally:
        proc.terminate()
        proc.wait(120)


def cpu_note(row: dict) -> str:
    engine = "" if row["engine_proc_cpu"] is None else f", engine process {row['engine_proc_cpu']:.2f}"
    return f"CPU cores used: server {row['server_cpu']:.2f}{engine}"


def _engine_modes(text: str) -> list[str]:
    modes = [m.strip() for m in text.split(",") if m.strip()]
    if not modes or any(m not in ("thread", "process") for m in modes):
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of 'thread' and 'process', got '{text}'")
    return modes


def _length_range(text: str) -> list[int]:
    try:
        lo, hi = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MIN,MAX (two integers), got '{text}'") from None
    if not 1 <= lo <= hi:
        raise argparse.ArgumentTypeError(f"expected 1 <= MIN <= MAX, got '{text}'")
    return [lo, hi]


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got '{text}'")
    return int(text)


def _rates(text: str) -> list[float]:
    try:
        rates = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated rates (requests/s or inf), got '{text}'") from None
    if not rates or min(rates) <= 0:
        raise argparse.ArgumentTypeError(f"rates must be > 0, got '{text}'")
    return rates


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The `flagstack bench serve` flags (engine flags included)."""
    from flagstack.engine.server.command import add_engine_flags

    p.add_argument("model", nargs="?", default=None,
                   help="as for `flagstack serve`; on an H100: qwen3-4b --load-format dummy")
    p.add_argument("--rates", type=_rates, default=[2.0, 8.0, 32.0, math.inf],
                   help="Poisson request rates per second, comma-separated; inf = all at once")
    p.add_argument("--num-requests", type=int, default=200)
    p.add_argument("--input-len", type=_length_range, default=[100, 1024], help="MIN,MAX prompt tokens (uniform)")
    p.add_argument("--output-len", type=_length_range, default=[100, 512], help="MIN,MAX output tokens (uniform)")
    p.add_argument("--client-procs", type=_positive, default=4, help="client processes sharing the streams")
    p.add_argument("--engine-modes", type=_engine_modes, default=["thread", "process"],
                   help="where the server runs its engine, one server per entry: thread, process or both")
    p.add_argument("--out-dir", default="bench/results")
    add_engine_flags(p)
