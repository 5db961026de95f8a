"""Does reading the model through several prompts ("views") beat one linear readout, and TF-IDF linear?
`python3 scripts/readout_views_probe.py [OUT_DIR]` (env N_TEST=300 cuts the test set; N_POOL, N_DEV likewise).

Each view is a prompt (zero-shot or 5 nearest-neighbour demos, with an answer prefix); every BBC document
(pool, dev, test) goes through it and its top-200 next-token log-probs are kept (`<OUT_DIR>/<view>.json`, reused
by a rerun). A linear readout (logistic regression, C=1, as annotate/readout.py) is fitted on the pool for each
view and for concatenations of views' features; accuracy on dev and test is printed next to TF-IDF linear,
with the views chosen on dev. Embedded SmolLM2 on the flagstack engine.
"""
import itertools
import json
import os
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression

from flagstack.annotate.backends.engine import EngineBackend
from flagstack.annotate.baselines import tfidf_linear
from flagstack.annotate.data import bbc_split
from flagstack.annotate.labeler import Labeler, LabelerConfig
from flagstack.annotate.prompt import PromptBuilder
from flagstack.annotate.readout import Readout
from flagstack.annotate.sweep import RunSpec, make_selectors, standard_specs
from flagstack.annotate.task import load_task

SPECS = {s.name: s for s in standard_specs()}
VIEWS = {  # name: (spec whose selection and prompt budget it takes, answer prefix)
    "zs-topic": ("zero-shot-linear-readout", "Topic:"),
    "knn-topic": ("5-shot-knn-linear-readout", "Topic:"),
    "zs-about": ("zero-shot-linear-readout", "In one word, this article is about"),
    "zs-section": ("zero-shot-linear-readout", "Newspaper section:"),
    "knn-section": ("5-shot-knn-linear-readout", "Newspaper section:"),
}


def gold(rows: list[dict]) -> list[dict]:
    return [dict(r, gold=r["label"]) for r in rows]


def view_dists(name: str, backend, task, pool, items: dict, out: Path) -> dict:
    """{part: [answer distribution per doc]} of one view, from `out/<name>.json` when it is there."""
    path = out / f"{name}.json"
    if path.exists():
        saved = json.loads(path.read_text())
        return {part: [{int(k): v for k, v in d.items()} for d in dists] for part, dists in saved.items()}
    spec_name, prefix = VIEWS[name]
    spec: RunSpec = SPECS[spec_name]
    view_task = replace(task, answer_prefix=prefix)
    labeler = Labeler(view_task, backend, PromptBuilder(view_task, backend.tokenizer, spec.prompt),
                      make_selectors(spec, pool), LabelerConfig(calibration="none", readout="linear"))
    dists = {part: [s.dist for s in labeler.score(rows)] for part, rows in items.items()}
    path.write_text(json.dumps(dists))
    return dists


def features(readouts: list[Readout], views: list[dict], part: str) -> np.ndarray:
    return np.hstack([r.features(v[part]) for r, v in zip(readouts, views)])


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/readout-views")
    out.mkdir(parents=True, exist_ok=True)
    split = bbc_split()
    items = {"pool": gold(split.pool[:int(os.environ.get("N_POOL", 500))]),
             "dev": gold(split.dev[:int(os.environ.get("N_DEV", 200))]),
             "test": gold(split.test[:int(os.environ.get("N_TEST", len(split.test)))])}
    task = load_task("bbc_news")
    names = task.label_names
    y = {part: np.array([names.index(r["gold"]) for r in rows]) for part, rows in items.items()}
    backend = EngineBackend()
    views = {name: view_dists(name, backend, task, items["pool"], items, out) for name in VIEWS}
    for part in ("dev", "test"):
        acc = (tfidf_linear(items["pool"], items[part], names).argmax(1) == y[part]).mean()
        print(f"tfidf-linear {part} {acc:.4f}", flush=True)
    results = []
    for size in range(1, len(VIEWS) + 1):
        for combo in itertools.combinations(VIEWS, size):
            chosen = [views[n] for n in combo]
            readouts = [Readout("linear", len(names)).fit(v["pool"], list(y["pool"])) for v in chosen]
            model = LogisticRegression(C=1.0, max_iter=5000).fit(features(readouts, chosen, "pool"), y["pool"])
            row = {"views": "+".join(combo)}
            for part in ("dev", "test"):
                row[part] = float((model.predict(features(readouts, chosen, part)) == y[part]).mean())
            results.append(row)
            print(f"{row['views']}: dev {row['dev']:.4f} test {row['test']:.4f}", flush=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    best = max(results, key=lambda r: (r["dev"], -r["views"].count("+")))
    print(f"chosen on dev: {best['views']} dev {best['dev']:.4f} test {best['test']:.4f}")


if __name__ == "__main__":
    main()
