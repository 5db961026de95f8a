"""Shared benchmark plumbing: timing, the device-copy bandwidth anchor, and the results files.

Every benchmark (ops, attention, engine, annotate) writes bench/results/<kind>-<device>-<date>.json
and a .md table beside it, rewriting both after each row so a crash loses nothing; a rerun on the
same day and device reads the JSON back and can skip the rows it already has (`ResultsFile.has`).
"""
from __future__ import annotations

import datetime
import json
import math
import os
import re
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch

RESULTS_DIR = Path("bench/results")


def default_device() -> str:
    """'cuda' when a GPU is visible, else 'cpu'."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def device_description(device: str | torch.device | None = None) -> str:
    """A human name for the device (default: `default_device()`): the GPU's name, or 'cpu (N cores)'."""
    device = torch.device(device or default_device())
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({os.cpu_count()} cores)"


def slug(text: str) -> str:
    """Lower-case text with every run of other characters turned into one '-' (for file names)."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


def time_us(fn: Callable[[], Any], device: str | torch.device | None = None, *, warmup_ms: float = 25,
            rep_ms: float = 100, cuda_graph: bool = False, cold_graph: bool = False) -> float:
    """Median wall time of one `fn()` call in microseconds.

    CUDA: triton.testing.do_bench (L2 flushed between calls, events around each call, so host
    overhead shows where it exceeds the flush); with `cuda_graph`, do_bench_cudagraph (calls replayed
    back to back from a CUDA graph: GPU time only, warm L2, as in a graph-captured decode step);
    with `cold_graph`, GPU time only with L2 flushed before every call (`cold_graph_time_us`).
    CPU: a perf_counter median over as many calls as fit in `rep_ms` (at least 3), after `warmup_ms`.
    """
    device = torch.device(device or default_device())
    if device.type == "cuda":
        import triton.testing

        if cold_graph:
            return cold_graph_time_us(fn, rep_ms=rep_ms)
        if cuda_graph:
            return 1e3 * triton.testing.do_bench_cudagraph(fn, rep=rep_ms, return_mode="median")
        return 1e3 * triton.testing.do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median")
    start = time.perf_counter()
    fn()  # first call: compilation and allocation happen here, outside the measurement
    first_s = time.perf_counter() - start
    for _ in range(int(warmup_ms / 1e3 / max(first_s, 1e-7))):
        fn()
    times = []
    for _ in range(max(3, min(1000, int(rep_ms / 1e3 / max(first_s, 1e-7))))):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e6 * statistics.median(times)


def interleaved_medians(variants: dict[str, Callable[[], Any]], rounds: int, pick: Callable[[list[float]], float]
                        = statistics.median, **timing: Any) -> dict[str, float]:
    """Median `time_us` of each variant over `rounds` (or `pick`, e.g. min for the best round), every variant
    timed once per round in turn, so that a drift of the machine (clocks, heat, neighbours) reaches them all
    alike. A variant that raises is reported and left out of the result."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            try:
                times[name].append(time_us(fn, **timing))
            except Exception as err:  # noqa: BLE001 -- e.g. a launch config out of shared memory
                print(f"{name}: {type(err).__name__}: {str(err)[:80]}", flush=True)
    return {name: pick(t) for name, t in times.items() if t}


def _replay_ms(graph: torch.cuda.CUDAGraph, reps: int) -> float:
    """Median time of one replay of `graph` over `reps` event-timed replays."""
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def cold_graph_time_us(fn: Callable[[], Any], calls: int = 20, rep_ms: float = 100) -> float:
    """GPU time of `fn()` with a cold L2 and no host overhead, in microseconds.

    One CUDA graph holds `calls` x (zero a 256 MB buffer, then fn()); a second holds only the
    zeroing. Their difference over `calls` is fn's device time as a graph-captured step sees it when
    its data comes from HBM (the L2 of an H100 is 50 MB: a warm-L2 loop would flatter small inputs).
    """
    flush = torch.empty(256 * 2 ** 20, dtype=torch.uint8, device="cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # compile and allocate outside the capture
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graphs = []
    for with_fn in (True, False):
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(calls):
                flush.zero_()
                if with_fn:
                    fn()
        graphs.append(graph)
    first = _replay_ms(graphs[0], 1)
    reps = max(3, min(100, int(rep_ms / max(first, 1e-3))))
    both, flush_only = (_replay_ms(g, reps) for g in graphs)
    return max(0.0, 1e3 * (both - flush_only) / calls)


def copy_time_us(nbytes: int, device: str | torch.device, **timing: float) -> float:
    """Time of a plain device copy moving `nbytes` in all (half read, half written): the ceiling."""
    half = max(1, nbytes // 2)
    src = torch.empty(half, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    return time_us(lambda: dst.copy_(src), device, **timing)


def gbps(nbytes: int, us: float) -> float:
    """Bandwidth in GB/s (1e9 bytes) of moving `nbytes` in `us` microseconds."""
    return nbytes / us / 1e3 if us > 0 else float("nan")


def _cell(value: Any) -> str:
    if isinstance(value, (list, tuple)):  # e.g. a confidence interval: [0.839, 1.0]
        return "[" + ", ".join(_cell(v) for v in value) + "]"
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:.0f}" if abs(value) >= 100 else f"{value:.3g}" if abs(value) < 1 else f"{value:.1f}"
    return "-" if value is None else str(value).replace("|", "\\|")


def markdown_table(rows: Sequence[dict], columns: Sequence[str] | None = None) -> str:
    """A markdown table of dicts; columns default to every key in order of first appearance.

    Floats get 3 significant digits below 1, one decimal below 100, none above; None/NaN print '-'.
    """
    if columns is None:
        columns = list(dict.fromkeys(k for row in rows for k in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


class ResultsFile:
    """Rows of one benchmark run, kept on disk (JSON + markdown) after every `add`.

    `key` names the fields that identify a row: adding a row with the same key replaces the old
    one, and `has(row)` tells a resumed run which rows it may skip.
    """

    def __init__(self, kind: str, meta: dict, key: Sequence[str], out_dir: str | Path = RESULTS_DIR,
                 columns: Sequence[str] | None = None, date: str | None = None):
        if not kind or slug(kind) != kind:
            raise ValueError(f"kind must be a lower-case slug like 'ops', got '{kind}'")
        if not key:
            raise ValueError("key must name at least one field")
        self.kind, self.key, self.columns = kind, tuple(key), columns
        self.meta = {"device": device_description(), **meta}
        date = date or datetime.date.today().isoformat()
        stem = Path(out_dir) / f"{kind}-{slug(self.meta['device'])}-{date}"
        self.json_path, self.md_path = stem.with_suffix(".json"), stem.with_suffix(".md")
        self.rows: list[dict] = []
        if self.json_path.exists():
            self.rows = json.loads(self.json_path.read_text()).get("rows", [])

    def _key_of(self, row: dict) -> tuple:
        missing = [k for k in self.key if k not in row]
        if missing:
            raise ValueError(f"row must have the key fields {self.key}, missing {missing}: {row}")
        return tuple(row[k] for k in self.key)

    def has(self, row: dict) -> bool:
        """Whether a row with the same key fields is already stored."""
        wanted = self._key_of(row)
        return any(self._key_of(r) == wanted for r in self.rows)

    def add(self, row: dict) -> None:
        """Store a row (replacing one with the same key) and rewrite both files."""
        wanted = self._key_of(row)
        self.rows = [r for r in self.rows if self._key_of(r) != wanted] + [dict(row)]
        self.save()

    def save(self) -> None:
        """Write the JSON and markdown files (each through a temporary file, then renamed)."""
        self.json_path.parent.mkdir(parents=True, exist_ok=True)
        body = {"kind": self.kind, "meta": self.meta, "rows": self.rows}
        header = f"# {self.kind} benchmark\n\n" + "".join(f"- {k}: {v}\n" for k, v in self.meta.items())
        for path, text in ((self.json_path, json.dumps(body, indent=1, default=str) + "\n"),
                           (self.md_path, header + "\n" + markdown_table(self.rows, self.columns))):
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(text)
            tmp.replace(path)

    @property
    def paths(self) -> tuple[Path, Path]:
        return self.json_path, self.md_path


def write_results(kind: str, rows: Iterable[dict], meta: dict, key: Sequence[str],
                  out_dir: str | Path = RESULTS_DIR, columns: Sequence[str] | None = None) -> tuple[Path, Path]:
    """Write rows (a list or a generator, saved as each arrives) to the JSON and markdown files."""
    results = ResultsFile(kind, meta, key, out_dir, columns)
    for row in rows:
        results.add(row)
    return results.paths


def torch_versions() -> dict:
    """Versions worth recording next to every benchmark number."""
    import triton

    return {"torch": torch.__version__, "triton": triton.__version__,
            "cuda": torch.version.cuda or "none"}
