"""Resumable JSONL results: each result is appended and flushed as it comes, and a rerun skips ids
already written. A crash can leave a torn last line; opening the file drops it.
"""
from __future__ import annotations

import json
import os
from pathlib import Path


def read_results(path: str | Path) -> list[dict]:
    """Every complete result row of a results file (a torn or corrupt line is skipped)."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and "id" in row:
            rows.append(row)
    return rows


class ResultWriter:
    """Append-only JSONL writer that knows which ids are done (also across runs)."""

    def __init__(self, path: str | Path, resume: bool = True):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        done = read_results(self.path) if resume else []
        # Rewrite only the complete rows, so a torn line from a crash does not glue onto the next one.
        with self.path.open("w", encoding="utf-8") as f:
            for row in done:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        self.done_ids = {str(row["id"]) for row in done}
        self._file = self.path.open("a", encoding="utf-8")

    def write(self, row: dict) -> None:
        """Append one result and push it to disk before returning."""
        self._file.write(json.dumps(row, ensure_ascii=False) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        self.done_ids.add(str(row["id"]))

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "ResultWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
