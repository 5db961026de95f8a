"""`flagstack annotate ...`: run, eval, leaderboard, sweep, demo, export-bbc."""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path


def _print_table(rows: list[dict], columns: list[str]) -> None:
    from flagstack.bench.common import markdown_table

    print(markdown_table(rows, columns))


def _backend(args):
    from flagstack.annotate.backends import make_backend

    return make_backend(args.backend, args.model, getattr(args, "base_url", None))


def _load_items(path: str, task, need_gold: bool = False) -> list[dict]:
    from flagstack.annotate.data import check_rows, read_records

    items, bad = check_rows(read_records(path), task, need_gold)
    for b in bad[:20]:
        print(f"bad row {b.index} (id {b.id}): {b.reason}", file=sys.stderr)
    if bad:
        print(f"{len(bad)} bad row(s) in {path} skipped", file=sys.stderr)
    return items


def _spec(args):
    from flagstack.annotate.prompt import PromptConfig
    from flagstack.annotate.sweep import RunSpec

    prompt = PromptConfig(max_prompt_tokens=args.max_prompt_tokens, demo_tokens=args.demo_tokens,
                          query_tokens=args.query_tokens, overlap=min(64, args.query_tokens // 4),
                          order="nearest_last" if args.selection in ("knn", "mmr") else "interleave")
    return RunSpec(args.name or Path(args.data).stem, args.selection if args.demos else "none",
                   args.shots, args.calibration, prompt, args.format, args.embedding, args.demo_sets,
                   readout=args.readout)


def _run(args) -> int:
    from flagstack.annotate.extract import extract
    from flagstack.annotate.labeler import Labeler, LabelerConfig
    from flagstack.annotate.output import ResultWriter
    from flagstack.annotate.prompt import PromptBuilder
    from flagstack.annotate.sweep import make_selectors
    from flagstack.annotate.task import load_task, with_prompt_format

    task = with_prompt_format(load_task(args.task), args.format)
    items = _load_items(args.data, task)
    pool = _load_items(args.demos, task, need_gold=True) if args.demos else []
    dev = _load_items(args.dev, task, need_gold=True) if args.dev else []
    if args.readout != "labels" and not pool:
        raise ValueError(f"--readout {args.readout} is fitted on the demo pool: give --demos")
    if args.task_views and not task.view_prefixes:
        raise ValueError(f"--task-views: task spec {args.task} lists no prompt.view_prefixes")
    if args.calibration is None:
        args.calibration = "contextual" if args.readout == "labels" else "none"
    spec = _spec(args)
    backend = _backend(args)
    builder = PromptBuilder(task, backend.tokenizer, spec.prompt)
    out = Path(args.out or f"{Path(args.data).stem}.{task.name}.results.jsonl")
    if task.type == "extraction":
        with ResultWriter(out) as writer:
            todo = [it for it in items if it["id"] not in writer.done_ids]
            for row in extract(todo, builder, backend, pool[:spec.shots]):
                writer.write(row)
        print(f"{len(todo)} item(s) extracted -> {out}")
        return 0
    labeler = Labeler(task, backend, builder, make_selectors(spec, pool) if pool else make_selectors(
        dataclasses.replace(spec, selection="none"), pool),
        LabelerConfig(calibration=args.calibration, readout=args.readout, readout_top_k=args.readout_top_k),
        view_prefixes=tuple(args.view_prefix or ()) + (task.view_prefixes if args.task_views else ()))
    if args.readout != "labels":  # the pool's scores are kept beside the results, so a rerun skips them
        labeler.fit_readout(pool, out.with_suffix(".pool-scores.jsonl"))
    labeler.fit(dev)
    with ResultWriter(out) as writer:
        skipped = len([it for it in items if it["id"] in writer.done_ids])
        rows = labeler.run(items, writer)
    low = [r for r in rows if r["confidence"] < args.review_threshold]
    review = out.with_suffix(".review.jsonl")
    review.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in low))
    counts: dict = {}
    for r in rows:
        key = r.get("label") or ",".join(r.get("labels", []))
        counts[key] = counts.get(key, 0) + 1
    _print_table([{"label": k, "items": v} for k, v in sorted(counts.items())], ["label", "items"])
    stats = backend.stats()
    print(f"{len(rows)} labeled, {skipped} already done, {len(low)} below confidence {args.review_threshold} "
          f"-> {review}\nresults -> {out}\nprompt tokens sent {stats['prompt_tokens_sent']}, computed "
          f"{stats['prompt_tokens_computed']}, cache hit rate {stats['cache_hit_rate']:.2f}")
    return 0


def _eval(args) -> int:
    from flagstack.annotate.evaluate import evaluate_results
    from flagstack.annotate.output import read_results
    from flagstack.annotate.report import reliability_svg, save_record
    from flagstack.annotate.task import load_task

    task = load_task(args.task)
    rows = read_results(args.results)
    metrics = evaluate_results(rows, task.label_names)
    print(f"n {metrics['n']}  accuracy {metrics['accuracy']:.3f}  macro-F1 {metrics['macro_f1']:.3f}  "
          f"ECE {metrics['ece']:.3f}")
    _print_table([{"label": k, **v} for k, v in metrics["per_class"].items()],
                 ["label", "precision", "recall", "f1", "support"])
    _print_table([{"gold \\ pred": g, **dict(zip(metrics["labels"], row))}
                  for g, row in zip(metrics["labels"], metrics["confusion"])], ["gold \\ pred", *metrics["labels"]])
    _print_table(metrics["coverage"], ["coverage", "threshold", "accuracy"])
    name = args.name or Path(args.results).name.split(".")[0]
    record = {"run": name, "method": "llm", "llm": True, "model": rows[0].get("model", "?"),
              "n": metrics["n"], "accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"],
              "ece": metrics["ece"], "metrics": metrics}
    if args.runs_dir:
        print(f"record -> {save_record(record, args.runs_dir)}")
        svg = Path(args.runs_dir) / f"{name}.reliability.svg"
        svg.write_text(reliability_svg(metrics["reliability"], name, 320))
    return 0


def _leaderboard(args) -> int:
    from flagstack.annotate.report import load_records, write_leaderboard

    records = load_records(args.runs_dir)
    if not records:
        raise ValueError(f"runs_dir {args.runs_dir}: no *.eval.json records (run `annotate sweep` or `eval`)")
    paths = write_leaderboard(records, args.out or args.runs_dir)
    _print_table(records, ["run", "model", "shots", "selection", "calibration", "readout", "n", "accuracy",
                           "accuracy_ci95", "macro_f1", "ece", "docs_per_s", "prompt_tokens", "cache_hit_rate"])
    print(f"leaderboard -> {paths[0]} and {paths[1]}")
    return 0


def _bbc_items(args):
    from flagstack.annotate.data import bbc_split, check_rows
    from flagstack.annotate.task import load_task

    task = load_task("bbc_news")
    split = bbc_split(args.seed)
    pool, dev, test = (check_rows(part, task)[0] for part in (split.pool, split.dev, split.test))
    return task, pool, dev[:args.n_dev], test[:args.n_test]


def _sweep(args) -> int:
    from flagstack.annotate.sweep import standard_specs, standard_sweep
    from flagstack.annotate.task import load_task

    specs = standard_specs(args.shots, args.many_shot_tokens, args.query_tokens, args.demo_tokens,
                           args.many_shot_demo_tokens, args.max_chunks, args.per_label,
                           load_task("bbc_news").view_prefixes)
    if args.only:
        names = args.only.split(",")
        unknown = sorted(set(names) - {s.name for s in specs})
        if unknown:
            raise ValueError(f"--only: unknown run name(s) {unknown}; known: {[s.name for s in specs]}")
        specs = [s for s in specs if s.name in names]
    task, pool, dev, test = _bbc_items(args)  # after the checks: a bad name fails before any loading
    if args.calibration and args.calibration != "contextual":  # the specs' default; a new name keeps rows apart
        specs = [dataclasses.replace(s, name=f"{s.name}-{args.calibration}", calibration=args.calibration)
                 if s.readout == "labels" else s for s in specs]
    standard_sweep(task, _backend(args), pool, dev, test, args.out, specs, dev_only=args.dev_only)
    args.runs_dir = str(Path(args.out) / "dev") if args.dev_only else args.out
    args.out = None
    return _leaderboard(args)


def _demo(args) -> int:
    """A bounded BBC sweep on the embedded model (a few minutes on 2 CPU cores)."""
    from flagstack.annotate.prompt import PromptConfig
    from flagstack.annotate.sweep import RunSpec, standard_sweep

    task, pool, dev, test = _bbc_items(args)
    short = PromptConfig(max_prompt_tokens=1536, demo_tokens=160, query_tokens=256, max_chunks=2)
    knn = dataclasses.replace(short, order="nearest_last")
    specs = [RunSpec("zero-shot", "none", 0, prompt=short),
             RunSpec("5-shot-random", "random", 5, prompt=short),
             RunSpec("5-shot-knn", "knn", 5, prompt=knn)]
    print(f"BBC News demo: {len(test)} test docs, {len(dev)} dev docs, pool {len(pool)}, backend {args.backend}")
    standard_sweep(task, _backend(args), pool, dev, test, args.out, specs)
    args.runs_dir = args.out
    return _leaderboard(args)


def _export_bbc(args) -> int:
    from flagstack.annotate.data import bbc_split, write_jsonl

    split = bbc_split(args.seed)
    for name in ("pool", "dev", "test"):
        print(write_jsonl(Path(args.out) / f"bbc_{name}.jsonl", getattr(split, name)))
    return 0


def _backend_args(p: argparse.ArgumentParser) -> None:
    from flagstack.annotate.backends import BACKENDS

    p.add_argument("--backend", default="engine", choices=BACKENDS,
                   help="engine (default, prefix-cached), hf (plain loop), hf-cached, openai (--base-url)")
    p.add_argument("--model", help="model path/name (default: the embedded SmolLM2-135M GGUF)")
    p.add_argument("--base-url", help="OpenAI-compatible endpoint, e.g. http://localhost:8000/v1")


def _bbc_args(p: argparse.ArgumentParser, n_test: int, n_dev: int, out: str) -> None:
    p.add_argument("--n-test", type=int, default=n_test, help="test documents (from the fixed BBC split)")
    p.add_argument("--n-dev", type=int, default=n_dev, help="dev documents for calibration")
    p.add_argument("--seed", type=int, default=0, help="split seed")
    p.add_argument("--out", default=out, help="results, records and leaderboard directory")


def add_annotate_commands(sub: argparse._SubParsersAction) -> None:
    """Register `flagstack annotate {run,eval,leaderboard,sweep,demo,export-bbc}`."""
    from flagstack.annotate.labeler import CALIBRATIONS
    from flagstack.annotate.readout import READOUTS

    ann = sub.add_parser("annotate", help="label documents by in-context learning, evaluate, leaderboard")
    cmds = ann.add_subparsers(dest="annotate_cmd", required=True)

    run = cmds.add_parser("run", help="label a JSONL/CSV/Parquet file with a task spec (resumable)")
    run.add_argument("--task", required=True, help="task spec YAML (or a bundled name: bbc_news)")
    run.add_argument("--data", required=True, help="items to label (.jsonl, .csv, .parquet)")
    run.add_argument("--out", help="results JSONL (default <data>.<task>.results.jsonl); a rerun resumes")
    run.add_argument("--demos", help="labeled demo pool file (without it: zero-shot)")
    run.add_argument("--dev", help="labeled dev file for calibration (priors, temperature)")
    run.add_argument("--selection", default="knn", choices=["random", "knn", "mmr"])
    run.add_argument("--shots", type=int, default=5)
    run.add_argument("--demo-sets", type=int, default=1, help="> 1: self-consistency over random demo sets")
    run.add_argument("--embedding", default="tfidf", choices=["tfidf", "minilm"])
    run.add_argument("--calibration", choices=CALIBRATIONS,
                     help="label-bias correction (default: contextual; none with a readout)")
    run.add_argument("--readout", default="labels", choices=READOUTS,
                     help="labels: score the label tokens (default); knn / linear: read the model's whole answer "
                     "distribution with a readout fitted on the --demos pool (kNN prompting / logistic regression)")
    run.add_argument("--readout-top-k", type=int, default=200, help="answer tokens a readout reads")
    run.add_argument("--view-prefix", action="append", metavar="TEXT",
                     help="with a readout: also read a zero-shot prompt ending in this answer prefix (repeatable)")
    run.add_argument("--task-views", action="store_true",
                     help="with a readout: also read the task spec's prompt.view_prefixes")
    run.add_argument("--format", default="plain", choices=["plain", "chat"])
    run.add_argument("--max-prompt-tokens", type=int, default=2048)
    run.add_argument("--demo-tokens", type=int, default=200)
    run.add_argument("--query-tokens", type=int, default=400)
    run.add_argument("--review-threshold", type=float, default=0.5, help="items below go to the review file")
    run.add_argument("--name", help="run name")
    _backend_args(run)
    run.set_defaults(func=_run)

    ev = cmds.add_parser("eval", help="metrics of a results file against its gold labels")
    ev.add_argument("--task", required=True)
    ev.add_argument("--results", required=True)
    ev.add_argument("--name", help="leaderboard row name (default: the results file's stem)")
    ev.add_argument("--runs-dir", help="also save the record (and a reliability SVG) here for the leaderboard")
    ev.set_defaults(func=_eval)

    lb = cmds.add_parser("leaderboard", help="JSON + HTML leaderboard of every evaluated run")
    lb.add_argument("--runs-dir", default="annotate_runs")
    lb.add_argument("--out", help="output directory (default: runs-dir)")
    lb.set_defaults(func=_leaderboard)

    sw = cmds.add_parser("sweep", help="standard sweep on BBC News: no-LLM rows, zero/k-shot, many-shot")
    _bbc_args(sw, 50, 40, "annotate_runs")
    sw.add_argument("--shots", type=int, default=5)
    sw.add_argument("--many-shot-tokens", type=int, default=4096, help="prompt budget of the many-shot rows")
    sw.add_argument("--query-tokens", type=int, default=400, help="item tokens per chunk")
    sw.add_argument("--max-chunks", type=int, default=8, help="chunks per long item; 1: cut head+tail instead")
    sw.add_argument("--demo-tokens", type=int, default=200, help="per-demo budget (head+tail) of the k-shot rows")
    sw.add_argument("--many-shot-demo-tokens", type=int, default=160, help="per-demo budget of the many-shot rows")
    sw.add_argument("--per-label", type=int, default=3, help="demos per label in the label-balanced kNN row")
    sw.add_argument("--calibration", choices=CALIBRATIONS, help="override the calibration of every row that "
                    "scores label tokens (default contextual); the run name gets it as a suffix")
    sw.add_argument("--dev-only", action="store_true", help="score the rows on the dev set only (records in "
                    "<out>/dev/): choose a configuration there, then run it on test")
    sw.add_argument("--only", help="comma-separated run names to keep")
    _backend_args(sw)
    sw.set_defaults(func=_sweep)

    demo = cmds.add_parser("demo", help="bounded BBC run on the embedded model, prints the leaderboard")
    _bbc_args(demo, 20, 10, "annotate_demo")
    _backend_args(demo)
    demo.set_defaults(func=_demo)

    ex = cmds.add_parser("export-bbc", help="write the fixed BBC split as pool/dev/test JSONL files")
    ex.add_argument("--seed", type=int, default=0)
    ex.add_argument("--out", default="data")
    ex.set_defaults(func=_export_bbc)
