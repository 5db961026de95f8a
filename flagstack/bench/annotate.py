"""Annotation speed: the pipeline (engine, shared demo prefix in the prefix cache, batched items) vs a
plain loop of HF transformers calls with the full prompt per item, on the same items and prompts.

  python -m flagstack.bench.annotate bbc --docs 20            # CPU: embedded SmolLM2, BBC, 5 demos
  python -m flagstack.bench.annotate long --model qwen3-4b    # GPU: 8k-token prompts, random weights,
                                                              # prefix cache on vs off
Rows go to bench/results/annotate-<device>-<date>.{json,md}.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from flagstack.bench.common import ResultsFile, markdown_table, torch_versions

LABELS = 5


def _time_scoring(backend, prompts_per_doc: list[list[list[int]]], candidates, batch: int) -> tuple[float, np.ndarray]:
    start = time.perf_counter()
    scores = []
    for i in range(0, len(prompts_per_doc), batch):
        flat = [p for doc in prompts_per_doc[i:i + batch] for p in doc]
        scores.append(backend.score(flat, candidates))
    return time.perf_counter() - start, np.concatenate(scores)


def _row(name: str, backend, seconds: float, docs: int, before: dict) -> dict:
    stats = backend.stats()
    sent = stats["prompt_tokens_sent"] - before["prompt_tokens_sent"]
    computed = stats["prompt_tokens_computed"] - before["prompt_tokens_computed"]
    return {"case": name, "backend": backend.model_name, "docs": docs, "seconds": seconds, "docs_per_s": docs / seconds,
            "prompt_tokens_per_doc": sent / docs, "computed_per_doc": computed / docs,
            "tokens_per_s": sent / seconds, "cache_hit_rate": 1 - computed / sent if sent else 0.0}


def bench_bbc(docs: int, shots: int, batch: int) -> list[dict]:
    """Same BBC items, same 5-random-demo prompts (~1,350 tokens): HF plain loop vs the pipeline."""
    from flagstack.annotate.backends.engine import EngineBackend
    from flagstack.annotate.backends.hf import HFBackend
    from flagstack.annotate.data import bbc_split, check_rows
    from flagstack.annotate.demos import RandomSelector
    from flagstack.annotate.prompt import PromptBuilder, PromptConfig
    from flagstack.annotate.task import load_task

    task = load_task("bbc_news")
    split = bbc_split()
    pool, items = check_rows(split.pool, task)[0], check_rows(split.test, task)[0][:docs]
    hf = HFBackend()
    builder = PromptBuilder(task, hf.tokenizer, PromptConfig(max_prompt_tokens=2048, demo_tokens=220,
                                                             query_tokens=256, max_chunks=1))
    demos = builder.pack(RandomSelector(pool, shots).select({}))
    prompts = [builder.item_prompts(it["text"], demos) for it in items]
    cands = builder.candidates()
    hf_s, hf_scores = _time_scoring(hf, prompts, cands, 1)
    rows = [_row("hf-loop", hf, hf_s, docs, {"prompt_tokens_sent": 0, "prompt_tokens_computed": 0})]
    del hf
    engine = EngineBackend()
    before = engine.stats()
    eng_s, eng_scores = _time_scoring(engine, prompts, cands, batch)
    rows.append(_row("pipeline", engine, eng_s, docs, before))
    rows[-1]["speedup"] = rows[0]["seconds"] / eng_s
    rows[-1]["argmax_agree"] = float((hf_scores.argmax(1) == eng_scores.argmax(1)).mean())
    rows[-1]["max_abs_diff"] = float(np.abs(hf_scores - eng_scores).max())
    return rows


def bench_long(model: str, prompt_tokens: int, query_tokens: int, docs: int, batch: int) -> list[dict]:
    """Synthetic token prompts (shared prefix + per-doc tail) on the engine, prefix cache on and off."""
    from flagstack.annotate.backends.engine import EngineBackend

    g = torch.Generator().manual_seed(0)
    prefix = torch.randint(1000, 30000, (prompt_tokens - query_tokens,), generator=g).tolist()
    prompts = [[prefix + torch.randint(1000, 30000, (query_tokens,), generator=g).tolist()] for _ in range(docs)]
    cands = [[100 + i] for i in range(LABELS)]
    rows = []
    for cache in (True, False):
        backend = EngineBackend(model, load_format="dummy", enable_prefix_caching=cache,
                                max_model_len=prompt_tokens + 16)
        _time_scoring(backend, prompts[:1], cands, 1)  # warm-up: kernels, CUDA graphs, and the prefix itself
        before = backend.stats()
        seconds, _ = _time_scoring(backend, prompts[1:], cands, batch)
        rows.append(_row(f"{prompt_tokens // 1024}k-prefix-cache-{'on' if cache else 'off'}", backend, seconds,
                         docs - 1, before))
        del backend
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    bbc = sub.add_parser("bbc")
    bbc.add_argument("--docs", type=int, default=20)
    bbc.add_argument("--shots", type=int, default=5)
    bbc.add_argument("--batch", type=int, default=16, help="items per engine call")
    long = sub.add_parser("long")
    long.add_argument("--model", default="qwen3-4b")
    long.add_argument("--prompt-tokens", type=int, default=8192)
    long.add_argument("--query-tokens", type=int, default=512)
    long.add_argument("--docs", type=int, default=33)
    long.add_argument("--batch", type=int, default=32)
    parser.add_argument("--out-dir", default="bench/results")
    args = parser.parse_args(argv)
    if args.mode == "bbc":
        rows = bench_bbc(args.docs, args.shots, args.batch)
    else:
        rows = bench_long(args.model, args.prompt_tokens, args.query_tokens, args.docs, args.batch)
    results = ResultsFile("annotate", {"mode": args.mode, **torch_versions()}, key=("case", "backend"),
                          out_dir=args.out_dir)
    for row in rows:
        results.add(row)
    print(markdown_table(rows))
    print(f"-> {results.paths[0]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
