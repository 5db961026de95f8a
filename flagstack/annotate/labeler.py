"""Classification by in-context learning: build each item's prompts, score every label in one
backend call per batch of items, aggregate chunks and demo sets, calibrate, write results.

An item's probabilities: per chunk, the label distribution (length-normalized, minus the
content-free distribution of the same demos when contextual calibration is on); the mean over its
chunks; the mean over demo sets (self-consistency, when several selectors are given); then the
dev-fitted bias and temperature. With a readout (annotate/readout.py), the model's top-k answer
distribution (mean over chunks and demo sets) goes through a readout fitted on the demo pool instead;
extra views add zero-shot prompts that ask the question with other answer prefixes, each read the same way.

Every item is scored once; both the raw and (when contextual calibration is on) the content-free
corrected distributions are kept, so `fit` reports the dev accuracy of every calibration from the
same forward passes, and a dev cache file lets later runs of the same prompts skip the dev set.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np

from flagstack.annotate.calibrate import Calibration, dev_prior, fit_temperature, label_logprobs
from flagstack.annotate.output import ResultWriter, read_results
from flagstack.annotate.prompt import PromptBuilder, prompt_hash
from flagstack.annotate.readout import READOUTS, Readout, merge
from flagstack.annotate.task import TaskSpec

CALIBRATIONS = ("none", "contextual", "dev_prior", "contextual+dev_prior")


@dataclasses.dataclass(frozen=True)
class LabelerConfig:
    calibration: str = "contextual"
    length_norm: bool = True
    fit_temperature: bool = True
    batch_items: int = 8      # items per backend call (the engine batches their prompts)
    readout: str = "labels"   # labels: score the label tokens; knn / linear: a readout fitted on the pool
    readout_top_k: int = 200  # tokens of the answer distribution a readout reads
    readout_neighbours: int = 9

    def __post_init__(self):
        if self.calibration not in CALIBRATIONS:
            raise ValueError(f"calibration must be one of {CALIBRATIONS}, got {self.calibration!r}")
        if self.readout not in READOUTS:
            raise ValueError(f"readout must be one of {READOUTS}, got {self.readout!r}")
        if self.readout != "labels" and self.calibration.startswith("contextual"):
            raise ValueError(f"calibration {self.calibration!r} does not apply to readout {self.readout!r} (the "
                             "readout learns the label bias from the pool): use none or dev_prior")
        if self.readout_top_k < 1 or self.readout_neighbours < 1:
            raise ValueError(f"readout_top_k and readout_neighbours must be >= 1, got {self.readout_top_k} and "
                             f"{self.readout_neighbours}")
        if self.batch_items < 1:
            raise ValueError(f"batch_items must be >= 1, got {self.batch_items}")


@dataclasses.dataclass
class Scored:
    item: dict
    logp: np.ndarray          # [L] log of the aggregated (contextually corrected) distribution
    demo_ids: list[str]
    prompt_hash: str
    chunks: int
    variants: dict = dataclasses.field(default_factory=dict)  # "none"/"contextual" -> [L] log-distribution
    dist: dict | list[dict] | None = None  # readouts: the top-k answer distribution {token: log-prob}, one per view


def _provenance(plan: list) -> tuple[list[str], str, int]:
    """(demo ids over all demo sets, hash of the first prompt, chunks) of one item's plan."""
    demo_ids = list(dict.fromkeys(d["id"] for demos, _ in plan for d in demos))
    return demo_ids, prompt_hash(plan[0][1][0]), len(plan[0][1])


class Labeler:
    """Labels items of a single- or multi-label task with a backend, a prompt builder and one or
    more demo selectors (several = self-consistency over demo sets)."""

    def __init__(self, task: TaskSpec, backend, builder: PromptBuilder, selectors: list,
                 config: LabelerConfig = LabelerConfig(), view_prefixes: tuple[str, ...] = ()):
        if task.type not in ("single_label", "multi_label"):
            raise ValueError(f"Labeler handles single_label and multi_label tasks, got {task.type!r}")
        if not selectors:
            raise ValueError("selectors must hold at least one demo selector")
        if config.readout != "labels" and task.type != "single_label":
            raise ValueError(f"readout {config.readout!r} needs a single_label task, got {task.type!r}")
        self.task, self.backend, self.builder, self.selectors, self.config = task, backend, builder, selectors, config
        if view_prefixes and config.readout == "labels":
            raise ValueError("view_prefixes need a readout (LabelerConfig.readout knn or linear): label scoring "
                             "reads only the main prompt")
        if task.answer_prefix in view_prefixes or len(set(view_prefixes)) != len(view_prefixes):
            raise ValueError(f"view_prefixes must differ from each other and from the task's answer prefix "
                             f"{task.answer_prefix!r}, got {list(view_prefixes)}")
        self.readout = (None if config.readout == "labels" else
                        Readout(config.readout, len(task.labels), k=config.readout_neighbours))
        # one zero-shot prompt builder per extra view: the task asked with another answer prefix
        self.views = [builder.with_answer_prefix(prefix) for prefix in view_prefixes]
        self.candidates = builder.candidates()
        self.lengths = [len(c) for c in self.candidates]
        self.calibration = Calibration()
        self.dev_accuracy: dict[str, float] = {}   # calibration -> dev accuracy (argmax), filled by fit
        self.dev_scored: list[Scored] = []
        self._content_free: dict[tuple, np.ndarray] = {}
        self.seconds = 0.0

    @property
    def contextual(self) -> bool:
        return self.config.calibration.startswith("contextual") and self.readout is None

    def _plan(self, item: dict) -> list[tuple[list[dict], list[list[int]]]]:
        """(demos, chunk prompts) per demo set for one item."""
        return [(demos, self.builder.item_prompts(item["text"], demos))
                for demos in (self.builder.pack(sel.select(item)) for sel in self.selectors)]

    def score(self, items: list[dict]) -> list[Scored]:
        """Raw (uncalibrated apart from the content-free correction) label log-distributions; with a
        readout, the answer distributions (and their labels once the readout is fitted)."""
        start = time.perf_counter()
        plans = [self._plan(item) for item in items]
        out = self._score_labels(items, plans) if self.readout is None else self._score_answers(items, plans)
        self.seconds += time.perf_counter() - start
        return out

    def _score_answers(self, items: list[dict], plans: list) -> list[Scored]:
        view_prompts = [[view.item_prompts(item["text"], []) for view in self.views] for item in items]
        prompts = [p for plan, views in zip(plans, view_prompts)
                   for chunk_prompts in [c for _, c in plan] + views for p in chunk_prompts]
        dists = iter(self.backend.answer_distribution(prompts, self.config.readout_top_k))
        out = []
        for item, plan, views in zip(items, plans, view_prompts):
            dist = merge([next(dists) for _, chunk_prompts in plan for _ in chunk_prompts])
            if views:
                dist = [dist] + [merge([next(dists) for _ in chunk_prompts]) for chunk_prompts in views]
            out.append(Scored(item, None, *_provenance(plan), dist=dist))
        return self._read_out(out)

    def _read_out(self, scored: list[Scored]) -> list[Scored]:
        """Fill in label log-probs from the answer distributions, once the readout is fitted."""
        if scored and self.readout is not None and self.readout.fitted:
            for s, logp in zip(scored, self.readout.log_proba([s.dist for s in scored])):
                s.logp, s.variants = logp, {"none": logp}
        return scored

    def fit_readout(self, pool: list[dict], cache: str | Path | None = None) -> None:
        """Put every pool document through this labeler's prompts and fit the readout on their answer
        distributions and gold labels. A document among its own demos (random or fixed selection) is left
        out: its answer is in its prompt. `cache`: a JSONL file of pool scores, read and extended."""
        if self.readout is None:
            raise ValueError("fit_readout needs a readout (LabelerConfig.readout knn or linear)")
        names = self.task.label_names
        scored = self._cached_scores(pool, cache, "demo pool (readout)")
        keep = [s for s in scored if s.item["id"] not in s.demo_ids and s.item.get("gold") in names]
        if not keep:
            raise ValueError("the demo pool has no labeled document outside its own demos to fit the readout on")
        self.readout.fit([s.dist for s in keep], [names.index(s.item["gold"]) for s in keep])

    def _score_labels(self, items: list[dict], plans: list) -> list[Scored]:
        prompts, cf_keys = [], []
        for plan in plans:
            for demos, chunk_prompts in plan:
                prompts += chunk_prompts
                key = tuple(d["id"] for d in demos)
                if self.contextual and key not in self._content_free and key not in cf_keys:
                    cf_keys.append(key)
                    prompts.append(self.builder.content_free_prompt(demos))
        logp = label_logprobs(self.backend.score(prompts, self.candidates), self.lengths, self.config.length_norm)
        rows = iter(logp)
        out = []
        for item, plan in zip(items, plans):
            per_set: dict[str, list] = {"none": [], "contextual": []}
            for demos, chunk_prompts in plan:
                chunk_logp = np.stack([next(rows) for _ in chunk_prompts])
                per_set["none"].append(np.exp(chunk_logp).mean(0))
                key = tuple(d["id"] for d in demos)
                if self.contextual:
                    if key not in self._content_free:
                        self._content_free[key] = next(rows)
                    corrected = chunk_logp - self._content_free[key]
                    corrected -= np.log(np.exp(corrected).sum(-1, keepdims=True))
                    per_set["contextual"].append(np.exp(corrected).mean(0))
            variants = {name: np.log(np.mean(sets, 0)) for name, sets in per_set.items() if sets}
            out.append(Scored(item, variants["contextual" if self.contextual else "none"], *_provenance(plan),
                              variants))
        return out

    def fit(self, dev_items: list[dict], cache: str | Path | None = None) -> Calibration:
        """Fit the dev prior (if chosen) and the temperature (on dev gold labels) from dev items, and
        record the dev accuracy of every calibration the scores allow. `cache`: a JSONL file of dev
        scores for these prompts (read, and extended with the items it lacks)."""
        if not dev_items:
            return self.calibration
        if self.readout is not None and not self.readout.fitted:
            raise ValueError("fit the readout on the demo pool (fit_readout) before fitting on dev")
        self.dev_scored = self._cached_scores(dev_items, cache)
        logp = np.stack([s.logp for s in self.dev_scored])
        bias = dev_prior(logp) if self.config.calibration.endswith("dev_prior") else None
        temperature = 1.0
        keep = [i for i, it in enumerate(dev_items) if it.get("gold") in self.task.label_names]
        gold = np.array([self.task.label_names.index(dev_items[i]["gold"]) for i in keep], dtype=int)
        if self.config.fit_temperature and keep and self.task.type == "single_label":
            temperature = fit_temperature(logp[keep] - (0 if bias is None else bias), gold)
        self.calibration = Calibration(bias, temperature)
        if keep and self.task.type == "single_label":
            self.dev_accuracy = {}
            for name in CALIBRATIONS:
                base = "contextual" if name.startswith("contextual") else "none"
                if base in self.dev_scored[0].variants:
                    v = np.stack([s.variants[base] for s in self.dev_scored])
                    if name.endswith("dev_prior"):
                        v = v - dev_prior(v)
                    self.dev_accuracy[name] = float((v[keep].argmax(1) == gold).mean())
        return self.calibration

    def _cached_scores(self, items: list[dict], cache: str | Path | None, desc: str = "dev (calibration)"
                       ) -> list[Scored]:
        """Items' scores, from `cache` where it has them; new ones are appended to it."""
        if cache is None:
            return self._batched(items, desc)
        known = {r["id"]: r for r in read_results(cache)}
        need = ("views" if self.views else "dist") if self.readout is not None else (
            "contextual" if self.contextual else "none")
        todo = [it for it in items if need not in known.get(it["id"], {})]
        def save(batch: list[Scored]) -> None:  # as each batch comes, so an interrupted pass resumes
            for s in batch:
                row = {"id": s.item["id"], "demos": s.demo_ids, "prompt_hash": s.prompt_hash, "chunks": s.chunks}
                if s.dist is not None:  # as pairs: JSON object keys would turn token ids into strings
                    row[need] = [[[k, v] for k, v in d.items()] for d in s.dist] if self.views else [
                        [k, v] for k, v in s.dist.items()]
                else:
                    row.update({k: v.tolist() for k, v in s.variants.items()})
                writer.write(row)
                known[row["id"]] = row

        with ResultWriter(cache) as writer:
            self._batched(todo, desc, on_batch=save)
        out = []
        for it in items:
            row = known[it["id"]]
            variants = {k: np.array(row[k]) for k in ("none", "contextual") if k in row}
            dist = None
            if need == "views":
                dist = [{k: v for k, v in pairs} for pairs in row["views"]]
            elif need == "dist":
                dist = {k: v for k, v in row["dist"]}
            out.append(Scored(it, variants.get(need), row["demos"], row["prompt_hash"], row["chunks"], variants, dist))
        return self._read_out(out)

    def _precompute(self, items: list[dict]) -> None:
        for sel in self.selectors:  # kNN/MMR: embed all items in one batch
            if hasattr(sel, "precompute"):
                sel.precompute(items)

    def _batched(self, items: list[dict], desc: str = "dev (calibration)", on_batch=None) -> list[Scored]:
        from tqdm import tqdm

        self._precompute(items)
        size, out = self.config.batch_items, []
        with tqdm(total=len(items), desc=desc, unit="doc") as bar:
            for i in range(0, len(items), size):
                batch = self.score(items[i:i + size])
                if on_batch is not None:
                    on_batch(batch)
                out += batch
                bar.update(len(batch))
        return out

    def result_row(self, scored: Scored) -> dict:
        """The output record of one item: label(s), confidence, every label's probability, provenance."""
        probs = self.calibration.apply(scored.logp)
        names = self.task.label_names
        best = int(np.argmax(probs))
        row = {"id": scored.item["id"]}
        if self.task.type == "multi_label":
            on = [l.name for l, p in zip(self.task.labels, probs) if p >= l.threshold]
            row["labels"] = on or [names[best]]
        else:
            row["label"] = names[best]
        row.update({"confidence": round(float(probs[best]), 6),
                    "probs": {n: round(float(p), 6) for n, p in zip(names, probs)},
                    "demos": scored.demo_ids, "chunks": scored.chunks,
                    "model": self.backend.model_name, "prompt_hash": scored.prompt_hash})
        if self.readout is not None:
            row["readout"] = self.readout.kind
        if self.views:
            row["views"] = [view.task.answer_prefix for view in self.views]
        if scored.item.get("gold") is not None:
            row["gold"] = scored.item["gold"]
        return row

    def run(self, items: list[dict], writer: ResultWriter | None = None, progress: bool = True) -> list[dict]:
        """Label the items not yet in `writer` (resume), writing each result as it comes."""
        todo = [it for it in items if writer is None or it["id"] not in writer.done_ids]
        if self.readout is not None and not self.readout.fitted:
            raise ValueError("fit the readout on the demo pool (fit_readout) before labeling")
        self._precompute(todo)
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(todo), desc=f"labeling ({self.backend.model_name})", unit="doc")
        rows = []
        try:
            for i in range(0, len(todo), self.config.batch_items):
                for scored in self.score(todo[i:i + self.config.batch_items]):
                    row = self.result_row(scored)
                    if writer is not None:
                        writer.write(row)
                    rows.append(row)
                if bar is not None:
                    bar.update(len(todo[i:i + self.config.batch_items]))
        finally:
            if bar is not None:
                bar.close()
        return rows
