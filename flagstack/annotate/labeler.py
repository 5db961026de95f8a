"""Classification by in-context learning: build each item's prompts, score every label in one
backend call per batch of items, aggregate chunks and demo sets, calibrate, write results.

An item's probabilities: per chunk, the label distribution (length-normalized, minus the
content-free distribution of the same demos when contextual calibration is on); the mean over its
chunks; the mean over demo sets (self-consistency, when several selectors are given); then the
dev-fitted bias and temperature.
"""
from __future__ import annotations

import dataclasses
import time

import numpy as np

from flagstack.annotate.calibrate import Calibration, dev_prior, fit_temperature, label_logprobs
from flagstack.annotate.output import ResultWriter
from flagstack.annotate.prompt import PromptBuilder, prompt_hash
from flagstack.annotate.task import TaskSpec

CALIBRATIONS = ("none", "contextual", "dev_prior", "contextual+dev_prior")


@dataclasses.dataclass(frozen=True)
class LabelerConfig:
    calibration: str = "contextual"
    length_norm: bool = True
    fit_temperature: bool = True
    batch_items: int = 8      # items per backend call (the engine batches their prompts)

    def __post_init__(self):
        if self.calibration not in CALIBRATIONS:
            raise ValueError(f"calibration must be one of {CALIBRATIONS}, got {self.calibration!r}")
        if self.batch_items < 1:
            raise ValueError(f"batch_items must be >= 1, got {self.batch_items}")


@dataclasses.dataclass
class Scored:
    item: dict
    logp: np.ndarray          # [L] log of the aggregated (contextually corrected) distribution
    demo_ids: list[str]
    prompt_hash: str
    chunks: int


class Labeler:
    """Labels items of a single- or multi-label task with a backend, a prompt builder and one or
    more demo selectors (several = self-consistency over demo sets)."""

    def __init__(self, task: TaskSpec, backend, builder: PromptBuilder, selectors: list,
                 config: LabelerConfig = LabelerConfig()):
        if task.type not in ("single_label", "multi_label"):
            raise ValueError(f"Labeler handles single_label and multi_label tasks, got {task.type!r}")
        if not selectors:
            raise ValueError("selectors must hold at least one demo selector")
        self.task, self.backend, self.builder, self.selectors, self.config = task, backend, builder, selectors, config
        self.candidates = builder.candidates()
        self.lengths = [len(c) for c in self.candidates]
        self.calibration = Calibration()
        self._content_free: dict[tuple, np.ndarray] = {}
        self.seconds = 0.0

    @property
    def contextual(self) -> bool:
        return self.config.calibration.startswith("contextual")

    def _plan(self, item: dict) -> list[tuple[list[dict], list[list[int]]]]:
        """(demos, chunk prompts) per demo set for one item."""
        return [(demos, self.builder.item_prompts(item["text"], demos))
                for demos in (self.builder.pack(sel.select(item)) for sel in self.selectors)]

    def score(self, items: list[dict]) -> list[Scored]:
        """Raw (uncalibrated apart from the content-free correction) label log-distributions."""
        start = time.perf_counter()
        plans = [self._plan(item) for item in items]
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
            per_set = []
            for demos, chunk_prompts in plan:
                chunk_logp = np.stack([next(rows) for _ in chunk_prompts])
                key = tuple(d["id"] for d in demos)
                if self.contextual:
                    if key not in self._content_free:
                        self._content_free[key] = next(rows)
                    chunk_logp = chunk_logp - self._content_free[key]
                    chunk_logp -= np.log(np.exp(chunk_logp).sum(-1, keepdims=True))
                per_set.append(np.exp(chunk_logp).mean(0))
            demo_ids = list(dict.fromkeys(d["id"] for demos, _ in plan for d in demos))
            out.append(Scored(item, np.log(np.mean(per_set, 0)), demo_ids, prompt_hash(plan[0][1][0]),
                              len(plan[0][1])))
        self.seconds += time.perf_counter() - start
        return out

    def fit(self, dev_items: list[dict]) -> Calibration:
        """Fit the dev prior (if chosen) and the temperature (on dev gold labels) from dev items."""
        if not dev_items:
            return self.calibration
        logp = np.stack([s.logp for s in self._batched(dev_items)])
        bias = dev_prior(logp) if self.config.calibration.endswith("dev_prior") else None
        temperature = 1.0
        gold = [self.task.label_names.index(it["gold"]) for it in dev_items if it.get("gold") in self.task.label_names]
        if self.config.fit_temperature and gold and self.task.type == "single_label":
            keep = [i for i, it in enumerate(dev_items) if it.get("gold") in self.task.label_names]
            temperature = fit_temperature(logp[keep] - (0 if bias is None else bias), np.array(gold))
        self.calibration = Calibration(bias, temperature)
        return self.calibration

    def _precompute(self, items: list[dict]) -> None:
        for sel in self.selectors:  # kNN/MMR: embed all items in one batch
            if hasattr(sel, "precompute"):
                sel.precompute(items)

    def _batched(self, items: list[dict], desc: str = "dev (calibration)") -> list[Scored]:
        from tqdm import tqdm

        self._precompute(items)
        size, out = self.config.batch_items, []
        with tqdm(total=len(items), desc=desc, unit="doc") as bar:
            for i in range(0, len(items), size):
                out += self.score(items[i:i + size])
                bar.update(len(items[i:i + size]))
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
        if scored.item.get("gold") is not None:
            row["gold"] = scored.item["gold"]
        return row

    def run(self, items: list[dict], writer: ResultWriter | None = None, progress: bool = True) -> list[dict]:
        """Label the items not yet in `writer` (resume), writing each result as it comes."""
        todo = [it for it in items if writer is None or it["id"] not in writer.done_ids]
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
