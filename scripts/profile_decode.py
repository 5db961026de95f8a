"""Where a decode step's time goes, on CUDA: `python3 scripts/profile_decode.py [--batches 1,256]`.

For each batch size: warm decode runs, then a profiled run (torch.profiler, CPU + CUDA) that records
only --steps decode steps (the prefill steps before them are skipped). Prints the wall time per decode
step, the GPU kernel time per step (the gap is host time the GPU waits through), the kernels that
take the most GPU time, and a cProfile of the Python side of a run. Qwen3-4B config, random weights.
"""
from __future__ import annotations

import argparse
import cProfile
import pstats
import time

import torch
from torch.profiler import ProfilerActivity, profile, schedule

from flagstack.engine.config import SamplingParams
from flagstack.engine.llm import LLM


def decode_run(llm: LLM, batch: int, steps: int, prompt_len: int, seed: int) -> float:
    """Seconds for `batch` prompts to generate `steps` tokens each (one prefill step, then decode)."""
    g = torch.Generator().manual_seed(seed)
    prompts = torch.randint(0, 150_000, (batch, prompt_len), generator=g).tolist()
    params = SamplingParams(temperature=0.0, max_tokens=steps, ignore_eos=True)
    torch.cuda.synchronize()
    start = time.perf_counter()
    llm.generate(prompts, params)
    torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batches", default="1,256")
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    llm = LLM("qwen3-4b", load_format="dummy", max_model_len=4096)
    for batch in map(int, args.batches.split(",")):
        decode_run(llm, batch, args.steps, args.prompt_len, seed=1)  # warm-up
        one = decode_run(llm, batch, 1, args.prompt_len, seed=2)
        full = decode_run(llm, batch, args.steps + 1, args.prompt_len, seed=3)
        step_ms = (full - one) / args.steps * 1e3
        prefill_steps = -(-batch * args.prompt_len // llm.engine.config.max_num_batched_tokens)
        runner = llm.engine.runner
        launch = runner.launch
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA],
                     schedule=schedule(skip_first=prefill_steps + 1, wait=0, warmup=1, active=args.steps, repeat=1)) as prof:
            def profiled_launch(*a, **k):
                out = launch(*a, **k)
                prof.step()
                return out
            runner.launch = profiled_launch
            decode_run(llm, batch, args.steps + prefill_steps + 4, args.prompt_len, seed=4)
            runner.launch = launch
        events = prof.key_averages()
        # ProfilerStep rows carry their steps' kernel time again: count the kernels only
        gpu_us = sum(e.self_device_time_total for e in events
                     if e.device_type.name == "CUDA" and not e.key.startswith("ProfilerStep"))
        print(f"\n== batch {batch}: {step_ms:.2f} ms per decode step unprofiled ({batch / step_ms * 1e3:.0f} tok/s); "
              f"GPU kernel time {gpu_us / 1e3 / args.steps:.2f} ms per decode step")
        print(events.table(sort_by="self_device_time_total", row_limit=args.top, max_name_column_width=70))
        host = cProfile.Profile()  # the Python side of the same run: where the GPU's idle time goes
        host.runcall(decode_run, llm, batch, args.steps + prefill_steps + 4, args.prompt_len, 5)
        pstats.Stats(host).sort_stats("tottime").print_stats(args.top)


if __name__ == "__main__":
    main()
