"""Batch-1 decode A/B on CUDA, Qwen3-4B config with random weights: environment settings that are read at import
(e.g. FLAGSTACK_PDL) each get their own process, alternated; each process times --runs greedy
generations of 128 prompt + 256 output tokens after a warm-up and prints their median tok/s.
`python3 scripts/b1_decode_ab.py FLAGSTACK_PDL=0 FLAGSTACK_PDL=1 --rounds 2`
(bench/results/b1-fused-decode-ab-*.md: its run on the decode fusions, since removed)
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time


def child(runs: int) -> None:
    import torch

    from flagstack.engine.config import SamplingParams
    from flagstack.engine.llm import LLM

    llm = LLM("qwen3-4b", load_format="dummy", max_model_len=4096)
    prompt = [torch.randint(0, 150_000, (128,), generator=torch.Generator().manual_seed(0)).tolist()]
    params = SamplingParams(temperature=0.0, max_tokens=256, ignore_eos=True)
    llm.generate(prompt, params)  # warm-up: compiles and graph capture
    rates = []
    for _ in range(runs):
        torch.cuda.synchronize()
        start = time.perf_counter()
        llm.generate(prompt, params)
        torch.cuda.synchronize()
        rates.append(256 / (time.perf_counter() - start))
    print(f"RESULT {statistics.median(rates):.1f} tok/s (runs: {', '.join(f'{r:.1f}' for r in rates)})", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("settings", nargs="*", help="NAME=VALUE, one process per setting")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.runs)
    results: dict[str, list[str]] = {s: [] for s in args.settings}
    for _ in range(args.rounds):
        for setting in args.settings:
            name, value = setting.split("=", 1)
            out = subprocess.run([sys.executable, __file__, "--child", "--runs", str(args.runs)],
                                 env={**os.environ, name: value}, capture_output=True, text=True)
            line = [l for l in out.stdout.splitlines() if l.startswith("RESULT")] or [out.stderr[-400:]]
            results[setting].append(line[-1])
            print(setting, line[-1], flush=True)
    for setting, lines in results.items():
        print(f"{setting}: " + " | ".join(lines))


if __name__ == "__main__":
    main()
