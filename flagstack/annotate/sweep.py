"""Evaluated runs: one LLM configuration or one no-LLM baseline on a test set -> results JSONL,
review file and an evaluation record (a leaderboard row). `standard_sweep` runs the usual rows.

Choosing a configuration without looking at the test set: `standard_sweep(..., dev_only=True)` scores
every spec on the dev set only and writes dev records (accuracy for each calibration from the same
scores) under <out>/dev/; the chosen spec then runs on test, reusing the cached dev scores
(<out>/dev-cache/, keyed by everything in the spec but its name and calibration).
A spec with a readout (knn or linear) first puts the demo pool through its prompts to fit the readout;
those scores are cached the same way (<out>/pool-cache/), shared by the knn and linear readouts.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path

from flagstack.annotate.baselines import BASELINES, run_baseline
from flagstack.annotate.demos import FixedSelector, KNNSelector, MMRSelector, RandomSelector, make_embedder
from flagstack.annotate.evaluate import evaluate_results
from flagstack.annotate.labeler import Labeler, LabelerConfig
from flagstack.annotate.output import ResultWriter, read_results
from flagstack.annotate.prompt import PromptBuilder, PromptConfig
from flagstack.annotate.readout import READOUTS
from flagstack.annotate.report import save_record
from flagstack.annotate.task import TaskSpec, with_prompt_format

SELECTIONS = ("none", "random", "fixed", "knn", "mmr")


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One LLM configuration: how demos are chosen and how many, prompt budget and calibration."""
    name: str
    selection: str = "none"
    shots: int = 0                 # demos asked of the selector (the prompt budget may keep fewer)
    calibration: str = "contextual"
    prompt: PromptConfig = PromptConfig()
    prompt_format: str = "plain"
    embedding: str = "tfidf"
    demo_sets: int = 1             # > 1: self-consistency over several random demo sets
    fixed_ids: tuple[str, ...] = ()
    seed: int = 0
    per_label: int | None = None   # knn: at most this many demos of each label (label-balanced kNN)
    readout: str = "labels"        # knn / linear: read the whole answer distribution (annotate/readout.py)
    readout_top_k: int = 200       # answer tokens a readout reads (SmolLM2, 300 BBC test docs: 50 -> 0.945,
                                   # 100 -> 0.96, 200 to 2000 -> 0.97)
    views: tuple[str, ...] = ()    # readouts: also read zero-shot prompts ending in these answer prefixes

    def __post_init__(self):
        if self.selection not in SELECTIONS:
            raise ValueError(f"selection must be one of {SELECTIONS}, got {self.selection!r}")
        if self.selection != "none" and self.selection != "fixed" and self.shots < 1:
            raise ValueError(f"shots must be >= 1 for selection {self.selection!r}, got {self.shots}")
        if self.demo_sets < 1:
            raise ValueError(f"demo_sets must be >= 1, got {self.demo_sets}")
        if self.readout not in READOUTS:
            raise ValueError(f"readout must be one of {READOUTS}, got {self.readout!r}")
        if self.views and self.readout == "labels":
            raise ValueError(f"views need a readout (knn or linear), got readout {self.readout!r}")


def make_selectors(spec: RunSpec, pool: list[dict]) -> list:
    """The demo selector(s) a run spec asks for (several only for self-consistency)."""
    if spec.selection == "none":
        return [RandomSelector(pool, 0)]
    if spec.selection == "random":
        return [RandomSelector(pool, spec.shots, spec.seed + i) for i in range(spec.demo_sets)]
    if spec.selection == "fixed":
        return [FixedSelector(pool, list(spec.fixed_ids))]
    embedder = make_embedder(spec.embedding)
    if spec.selection == "knn":
        return [KNNSelector(pool, spec.shots, embedder, spec.per_label)]
    return [MMRSelector(pool, spec.shots, embedder)]


def _write_review(rows: list[dict], path: Path, threshold: float) -> int:
    low = [r for r in rows if r["confidence"] < threshold]
    with path.open("w", encoding="utf-8") as f:
        for r in low:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return len(low)


def dev_cache_path(spec: RunSpec, task: TaskSpec, model_name: str, pool: list[dict], out_dir: str | Path,
                   kind: str = "dev") -> Path:
    """Where the dev (or, kind "pool", demo-pool) scores of a spec live: shared by specs that differ only
    in name, calibration or which readout reads the distributions (their prompts, hence their scores, are
    the same); another task, model or demo pool gets its own."""
    fields = {k: v for k, v in dataclasses.asdict(spec).items() if k not in ("name", "calibration")}
    fields["readout"] = "labels" if spec.readout == "labels" else "distribution"
    if spec.readout == "labels":
        del fields["readout_top_k"]
    ident = [fields, dataclasses.asdict(task), model_name, sorted(d["id"] for d in pool)]
    key = hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return Path(out_dir) / f"{kind}-cache" / f"{key}.jsonl"


def _dev_record(spec: RunSpec, labeler: Labeler, task: TaskSpec, model_name: str, out_dir: Path) -> dict:
    """The dev-set record of a spec (for choosing configurations without the test set)."""
    rows = [labeler.result_row(s) for s in labeler.dev_scored]
    metrics = evaluate_results(rows, task.label_names)
    record = {"run": spec.name, "method": "llm", "llm": True, "model": model_name, "split": "dev",
              "shots": round(sum(len(r["demos"]) for r in rows) / len(rows), 1), "selection": spec.selection,
              "calibration": spec.calibration, "readout": spec.readout, "n": metrics["n"],
              "accuracy": metrics["accuracy"], "accuracy_ci95": metrics["accuracy_ci95"],
              "macro_f1": metrics["macro_f1"], "ece": metrics["ece"],
              "dev_accuracy": labeler.dev_accuracy, "spec": dataclasses.asdict(spec), "metrics": metrics}
    save_record(record, out_dir / "dev")
    return record


def llm_run(spec: RunSpec, task: TaskSpec, backend, pool: list[dict], dev: list[dict], test: list[dict],
            out_dir: str | Path, review_threshold: float = 0.5, progress: bool = True, dev_only: bool = False
            ) -> dict:
    """Fit calibration on dev, label test (resuming), write results/review files; return the record.
    dev_only: score the dev set only and return its record (saved under out_dir/dev/)."""
    out_dir = Path(out_dir)
    task = with_prompt_format(task, spec.prompt_format)
    builder = PromptBuilder(task, backend.tokenizer, spec.prompt)
    labeler = Labeler(task, backend, builder, make_selectors(spec, pool),
                      LabelerConfig(calibration=spec.calibration, readout=spec.readout,
                                    readout_top_k=spec.readout_top_k), view_prefixes=spec.views)
    if spec.readout != "labels":
        labeler.fit_readout(pool, dev_cache_path(spec, task, backend.model_name, pool, out_dir, "pool"))
    calibration = labeler.fit(dev, dev_cache_path(spec, task, backend.model_name, pool, out_dir))
    if dev_only:
        if not dev:
            raise ValueError("dev_only needs a non-empty dev set")
        return _dev_record(spec, labeler, task, backend.model_name, out_dir)
    stats_before = backend.stats()
    with ResultWriter(out_dir / f"{spec.name}.jsonl") as writer:
        start = time.perf_counter()
        new = labeler.run(test, writer, progress=progress)
        seconds = time.perf_counter() - start
    wanted = {it["id"] for it in test}
    rows = [r for r in read_results(out_dir / f"{spec.name}.jsonl") if r["id"] in wanted]
    stats = backend.stats()
    sent = stats["prompt_tokens_sent"] - stats_before["prompt_tokens_sent"]
    computed = stats["prompt_tokens_computed"] - stats_before["prompt_tokens_computed"]
    metrics = evaluate_results(rows, task.label_names)
    record = {
        "run": spec.name, "method": "llm", "llm": True, "model": backend.model_name,
        "shots": round(sum(len(r["demos"]) for r in rows) / len(rows), 1), "selection": spec.selection,
        "calibration": spec.calibration, "readout": spec.readout, "prompt_format": spec.prompt_format,
        "n": metrics["n"], "accuracy": metrics["accuracy"], "accuracy_ci95": metrics["accuracy_ci95"],
        "macro_f1": metrics["macro_f1"], "ece": metrics["ece"], "dev_accuracy": labeler.dev_accuracy,
        "docs_per_s": len(new) / seconds if new and seconds > 0 else None,
        "tokens_per_s": sent / seconds if new and seconds > 0 else None,
        "prompt_tokens": round(sent / len(new)) if new else None,
        "prompt_tokens_computed": round(computed / len(new)) if new else None,
        "cache_hit_rate": 1 - computed / sent if sent else None,
        "review": _write_review(rows, out_dir / f"{spec.name}.review.jsonl", review_threshold),
        "calibration_fit": calibration.as_dict(), "spec": dataclasses.asdict(spec), "metrics": metrics,
    }
    save_record(record, out_dir)
    return record


def baseline_record(name: str, task: TaskSpec, pool: list[dict], test: list[dict], out_dir: str | Path) -> dict:
    """Run one no-LLM baseline on test, save its result rows (<name>.jsonl, for paired comparisons)
    and its record."""
    rows, seconds = run_baseline(name, pool, test, task.label_names)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    with ResultWriter(Path(out_dir) / f"{name}.jsonl", resume=False) as writer:
        for row in rows:
            writer.write(row)
    metrics = evaluate_results(rows, task.label_names)
    record = {"run": name, "method": name, "llm": False, "model": "none", "shots": len(pool), "selection": "pool",
              "calibration": "-", "n": metrics["n"], "accuracy": metrics["accuracy"],
              "accuracy_ci95": metrics["accuracy_ci95"], "macro_f1": metrics["macro_f1"],
              "ece": metrics["ece"], "docs_per_s": len(test) / seconds if seconds > 0 else None,
              "metrics": metrics}
    save_record(record, out_dir)
    return record


def standard_specs(shots: int = 5, many_shot_tokens: int = 4096, query_tokens: int = 400, demo_tokens: int = 200,
                   many_shot_demo_tokens: int = 160, max_chunks: int = 8, per_label: int = 3,
                   view_prefixes: tuple[str, ...] = ()) -> list[RunSpec]:
    """The standard sweep: zero-shot, k-shot random, k-shot nearest neighbours (TF-IDF and MiniLM
    embeddings, MMR), many-shot to the token budget (random; kNN; label-balanced kNN with at most
    `per_label` demos of each label), and prompts read by readouts fitted on the demo pool: zero-shot
    (linear, and kNN prompting) and k-shot nearest neighbours (linear), and, given the task's
    `view_prefixes`, both of those linear rows reading the extra zero-shot views too. Every spec that
    scores label tokens uses contextual calibration; the dev records show the other calibrations on the
    same scores."""
    base = PromptConfig(max_prompt_tokens=max(2048, query_tokens + 1024), demo_tokens=demo_tokens,
                        query_tokens=query_tokens, overlap=min(64, query_tokens // 4), max_chunks=max_chunks)
    many = dataclasses.replace(base, max_prompt_tokens=many_shot_tokens, demo_tokens=many_shot_demo_tokens)
    knn, many_knn = (dataclasses.replace(c, order="nearest_last") for c in (base, many))
    return [
        RunSpec("zero-shot", "none", 0, prompt=base),
        RunSpec(f"{shots}-shot-random", "random", shots, prompt=base),
        RunSpec(f"{shots}-shot-knn", "knn", shots, prompt=knn),
        RunSpec(f"{shots}-shot-knn-minilm", "knn", shots, prompt=knn, embedding="minilm"),
        RunSpec(f"{shots}-shot-mmr-minilm", "mmr", shots, prompt=knn, embedding="minilm"),
        RunSpec("many-shot-random", "random", 200, prompt=many),
        RunSpec("many-shot-knn", "knn", 200, prompt=many_knn),
        RunSpec("many-shot-knn-minilm", "knn", 200, prompt=many_knn, embedding="minilm"),
        RunSpec("many-shot-knn-balanced", "knn", 200, prompt=many_knn, per_label=per_label),
        RunSpec("many-shot-knn-balanced-minilm", "knn", 200, prompt=many_knn, embedding="minilm",
                per_label=per_label),
        RunSpec("zero-shot-linear-readout", "none", 0, "none", prompt=base, readout="linear"),
        RunSpec("zero-shot-knn-prompting", "none", 0, "none", prompt=base, readout="knn"),
        RunSpec(f"{shots}-shot-knn-linear-readout", "knn", shots, "none", prompt=knn, readout="linear"),
    ] + ([
        RunSpec(f"zero-shot-{1 + len(view_prefixes)}-view-readout", "none", 0, "none", prompt=base,
                readout="linear", views=tuple(view_prefixes)),
        RunSpec(f"{shots}-shot-knn-{1 + len(view_prefixes)}-view-readout", "knn", shots, "none", prompt=knn,
                readout="linear", views=tuple(view_prefixes)),
    ] if view_prefixes else [])


def standard_sweep(task: TaskSpec, backend, pool: list[dict], dev: list[dict], test: list[dict], out_dir: str | Path,
                   specs: list[RunSpec] | None = None, progress: bool = True, dev_only: bool = False) -> list[dict]:
    """Every no-LLM baseline and every LLM spec on the same test set; returns their records.
    dev_only: the same rows on the dev set instead (records under out_dir/dev/), the test set unread."""
    records = [baseline_record(name, task, pool, dev if dev_only else test, Path(out_dir) / "dev" if dev_only
                               else out_dir) for name in BASELINES]
    for spec in specs or standard_specs(view_prefixes=task.view_prefixes):
        records.append(llm_run(spec, task, backend, pool, dev, test, out_dir, progress=progress, dev_only=dev_only))
    return records
