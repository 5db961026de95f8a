"""Annotation speed: the pipeline (engine, shared demo prefix in the prefix cache, batched items) vs a
plain loop of HF transformers calls with the full prompt per item, on the same items and prompts.

  python -m flagstack.bench.annotate bbc --docs 40            # CPU: embedded SmolLM2, BBC, 5 demos
  python -m flagstack.bench.annotate long --model qwen3-4b    # GPU: 8k-token prompts, random weights,
                                                              # prefix cache on vs off
  python -m flagstack.bench.annotate accuracy --runs-dir annotate_runs/x   # a finished `annotate sweep`
Speed rows go to bench/results/annotate-<device>-<date>.{json,md}; accuracy rows (every test and dev
record of a sweep, with 95% intervals, and the dev-chosen LLM row paired against every no-LLM row)
to bench/results/annotate-accuracy-<device>-<date>.{json,md}.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from flagstack.bench.common import ResultsFile, device_description, markdown_table, torch_versions

LABELS = 5


def _time_scoring(backend, prompts_per_doc: list[list[list[int]]], candidates,
                  batch: int) -> tuple[float, float, np.ndarray]:
    """(wall seconds, process CPU seconds, scores); CPU seconds well under threads x wall mean the run
    shared the cores with other work."""
    start, cpu_start = time.perf_counter(), time.process_time()
    scores = []
    for i in range(0, len(prompts_per_doc), batch):
        flat = [p for doc in prompts_per_doc[i:i + batch] for p in doc]
        scores.append(backend.score(flat, candidates))
    return time.perf_counter() - start, time.process_time() - cpu_start, np.concatenate(scores)


def _row(name: str, backend, seconds: float, cpu_seconds: float, docs: int, before: dict) -> dict:
    stats = backend.stats()
    sent = stats["prompt_tokens_sent"] - before["prompt_tokens_sent"]
    computed = stats["prompt_tokens_computed"] - before["prompt_tokens_computed"]
    return {"case": name, "backend": backend.model_name, "docs": docs, "seconds": seconds,
            "cpu_seconds": cpu_seconds, "docs_per_s": docs / seconds,
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
    from flagstack.engine.cpu_malloc import keep_freed_memory

    keep_freed_memory()  # the engine sets it on CPU anyway: set here, the HF loop that runs first gets it too
    task = load_task("bbc_news")
    split = bbc_split()
    pool, items = check_rows(split.pool, task)[0], check_rows(split.test, task)[0][:docs]
    hf = HFBackend()
    builder = PromptBuilder(task, hf.tokenizer, PromptConfig(max_prompt_tokens=2048, demo_tokens=220,
                                                             query_tokens=256, max_chunks=1))
    demos = builder.pack(RandomSelector(pool, shots).select({}))
    prompts = [builder.item_prompts(it["text"], demos) for it in items]
    cands = builder.candidates()
    hf_s, hf_cpu, hf_scores = _time_scoring(hf, prompts, cands, 1)
    rows = [_row("hf-loop", hf, hf_s, hf_cpu, docs, {"prompt_tokens_sent": 0, "prompt_tokens_computed": 0})]
    del hf
    engine = EngineBackend()
    before = engine.stats()
    eng_s, eng_cpu, eng_scores = _time_scoring(engine, prompts, cands, batch)
    rows.append(_row("pipeline", engine, eng_s, eng_cpu, docs, before))
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
        seconds, cpu_seconds, _ = _time_scoring(backend, prompts[1:], cands, batch)
        rows.append(_row(f"{prompt_tokens // 1024}k-prefix-cache-{'on' if cache else 'off'}", backend, seconds,
                         cpu_seconds, docs - 1, before))
        del backend
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return rows


ACCURACY_COLUMNS = ("split", "run", "llm", "shots", "selection", "calibration", "readout", "n", "accuracy", "ci95_lo",
                    "ci95_hi", "macro_f1", "ece", "dev_accuracy", "docs_per_s", "prompt_tokens",
                    "prompt_tokens_computed", "cache_hit_rate")


def _accuracy_row(record: dict, split: str) -> dict:
    dev = record.get("dev_accuracy") or {}
    lo, hi = record["metrics"]["accuracy_ci95"]
    return {"split": split, **{c: record.get(c) for c in ACCURACY_COLUMNS if c not in ("split", "ci95_lo", "ci95_hi")},
            "ci95_lo": lo, "ci95_hi": hi, "dev_accuracy": dev.get(record.get("calibration"))}


def accuracy_summary(runs_dir: str) -> tuple[list[dict], dict]:
    """Rows for every test record in runs_dir and dev record in runs_dir/dev, and the comparison of the
    LLM test row chosen on dev (highest dev accuracy) with every no-LLM row on the same test items."""
    from pathlib import Path

    from flagstack.annotate.evaluate import mcnemar
    from flagstack.annotate.output import read_results
    from flagstack.annotate.report import load_records

    test, dev = load_records(runs_dir), load_records(Path(runs_dir) / "dev")
    if not test:
        raise ValueError(f"runs_dir {runs_dir}: no *.eval.json test records")
    rows = [_accuracy_row(r, "test") for r in test] + [_accuracy_row(r, "dev") for r in dev]
    llm = [r for r in rows if r["split"] == "test" and r["llm"] and r["dev_accuracy"] is not None]
    summary: dict = {"chosen_on_dev": None, "paired": []}
    if llm:
        chosen = max(llm, key=lambda r: r["dev_accuracy"])
        summary["chosen_on_dev"] = chosen["run"]

        def correct(run: str) -> dict:
            return {r["id"]: r["label"] == r["gold"] for r in read_results(Path(runs_dir) / f"{run}.jsonl")}
        mine = correct(chosen["run"])
        for other in (r for r in rows if r["split"] == "test" and not r["llm"]):
            theirs = correct(other["run"])
            ids = sorted(set(mine) & set(theirs))
            if ids:
                summary["paired"].append({"a": chosen["run"], "b": other["run"],
                                          **mcnemar([mine[i] for i in ids], [theirs[i] for i in ids])})
    return rows, summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    bbc = sub.add_parser("bbc")
    # the demo block (~1,100 tokens) is computed once a run: more documents show its per-document cost less
    # (2-core CPU, back to back: 4.8x the HF loop over 20 documents, 5.7x over 40)
    bbc.add_argument("--docs", type=int, default=40)
    bbc.add_argument("--shots", type=int, default=5)
    bbc.add_argument("--batch", type=int, default=16, help="items per engine call")
    long = sub.add_parser("long")
    long.add_argument("--model", default="qwen3-4b")
    long.add_argument("--prompt-tokens", type=int, default=8192)
    long.add_argument("--query-tokens", type=int, default=512)
    long.add_argument("--docs", type=int, default=33)
    long.add_argument("--batch", type=int, default=32)
    acc = sub.add_parser("accuracy")
    acc.add_argument("--runs-dir", required=True, help="the --out of a finished `flagstack annotate sweep`")
    acc.add_argument("--command", default="", help="the sweep command(s) that made it, recorded in the meta")
    acc.add_argument("--note", default="", help="a summary line recorded in the meta")
    acc.add_argument("--device", help="the device the sweep ran on, when it is summarized on another machine "
                     "(default: this one); names the results file")
    acc.add_argument("--name", default="annotate-accuracy", help="results file name before the device and date")
    parser.add_argument("--out-dir", default="bench/results")
    args = parser.parse_args(argv)
    if args.mode == "accuracy":
        rows, summary = accuracy_summary(args.runs_dir)
        paired = [f"{p['a']} vs {p['b']}: diff {p['diff']:+.3f} on {p['n']} docs ({p['only_a']} right only by "
                  f"{p['a']}, {p['only_b']} only by {p['b']}), exact McNemar p = {p['p_value']:.3g}"
                  for p in summary["paired"]]
        meta = {"runs_dir": args.runs_dir, "command": args.command, "chosen_on_dev": summary["chosen_on_dev"],
                "paired": "; ".join(paired), "note": args.note}
        if args.device:  # this machine's versions would not be the sweep's
            meta = {"device": args.device, **meta, "summarized_on": device_description()}
        else:
            meta.update(torch_versions())
        results = ResultsFile(args.name, meta,
                              key=("split", "run"), out_dir=args.out_dir, columns=ACCURACY_COLUMNS)
        results.rows = []  # a sweep's summary replaces the day's older one
        for row in rows:
            results.add(row)
        print(markdown_table(rows, ACCURACY_COLUMNS))
        print("\n".join([f"chosen on dev: {summary['chosen_on_dev']}", *paired]))
        print(f"-> {results.paths[0]}")
        return 0
    if args.mode == "bbc":
        rows = bench_bbc(args.docs, args.shots, args.batch)
    else:
        rows = bench_long(args.model, args.prompt_tokens, args.query_tokens, args.docs, args.batch)
    results = ResultsFile("annotate", {"mode": args.mode, **torch_versions()}, key=("case", "backend", "docs"),
                          out_dir=args.out_dir)
    for row in rows:
        results.add(row)
    print(markdown_table(rows))
    print(f"-> {results.paths[0]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
