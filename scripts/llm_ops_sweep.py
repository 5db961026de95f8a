"""Which candidate closes each LLM-op gap of issue 2? Times, in one process and per gap cell, our
current config, each candidate variant (the `config=` switches of the op files; defaults unchanged)
and the anchors that beat us, and checks every variant's output against the default's.

Gap cells (bench/results/ops-nvidia-h100-80gb-hbm3-2026-11-27.md): add_rms_norm at 256/4096 rows,
rotary_embedding at 32768, gelu / gelu_and_mul (exact erf), softmax at 32768 x 151,936 (% of copy),
sample at 4096 rows. On CUDA: `python3 scripts/llm_ops_sweep.py [--out DIR] [--only add_rms_norm,gelu]`
(expected ~2 minutes on an H100, compiles included; not yet run there). On CPU `--quick` runs the
same cells on tiny shapes through the Triton interpreter: it checks the script and the variants,
not speed.
Writes llm-sweep-<device>-<date>.json/.md under --out (default $OUT, else /tmp/llm-ops-sweep).
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from flagstack import ops  # noqa: E402
from flagstack.bench.common import (ResultsFile, copy_time_us, device_description, markdown_table,  # noqa: E402
                                    time_us, torch_versions)
from flagstack.bench.ops import implementations  # noqa: E402
from flagstack.ops.activation import ActConfig, gelu_and_mul_triton, gelu_triton, silu_and_mul_triton  # noqa: E402
from flagstack.ops.registry import BenchCase  # noqa: E402
from flagstack.ops.rms_norm import NormConfig, add_rms_norm_triton  # noqa: E402
from flagstack.ops.rotary import RopeConfig, rotary_embedding_triton  # noqa: E402
from flagstack.ops.sampling import SampleConfig, sample_triton  # noqa: E402
from flagstack.ops.selftest import ATOL, RESOLUTION  # noqa: E402

softmax_module = importlib.import_module("flagstack.ops.softmax")  # flagstack.ops.softmax is the op
sampling_module = importlib.import_module("flagstack.ops.sampling")

COLUMNS = ("cell", "impl", "us", "graph_us", "vs_default", "vs_best_anchor", "%copy", "check", "notes")
INFO = "info:"  # a variant label starting with this is a reference point of another op: not checked
PART = "part:"  # a component of our default (no ratios)
Call = Callable[[], Any]
Builder = Callable[[BenchCase], Call]  # fresh inputs -> the call to time


@dataclass
class Cell:
    """One (op, rows) gap: our variants by label (the first is the current default) and the anchors."""

    op: str
    rows: int
    variants: dict[str, Builder]
    anchors: tuple[str, ...]
    case_kwargs: dict = field(default_factory=dict)  # bench_case width arguments (tiny on CPU)
    graph: bool = False  # also time from a CUDA graph (small, launch-bound cells)
    check_rows: int | None = None  # rows of the output check (None: rows); fewer keeps big cells in memory
    extra: Callable[[Cell, str, dict], list[dict]] | None = None  # more rows (e.g. a component breakdown)

    @property
    def name(self) -> str:
        return f"{self.op}/{self.rows}"


def _with(fn: Callable, **kwargs: Any) -> Builder:
    return lambda case: lambda: fn(*case.args, **case.kwargs, **kwargs)


def _norm_cells(small: bool) -> list[Cell]:
    out_x: Builder = lambda case: lambda: add_rms_norm_triton(*case.args, out=case.args[0])  # noqa: E731
    early_out_x: Builder = lambda case: lambda: add_rms_norm_triton(  # noqa: E731
        *case.args, out=case.args[0], config=NormConfig(early_weight=True))
    variants = {"default": _with(add_rms_norm_triton),
                "early_weight": _with(add_rms_norm_triton, config=NormConfig(early_weight=True)),
                "early_weight+warps4": _with(add_rms_norm_triton, config=NormConfig(num_warps=4, early_weight=True)),
                "early_weight+warps2": _with(add_rms_norm_triton, config=NormConfig(num_warps=2, early_weight=True)),
                "out=x (FlagGems' in-place y)": out_x,
                "early_weight+out=x": early_out_x}
    kw = {"hidden": 64} if small else {}
    return [Cell("add_rms_norm", rows, variants, ("flaggems", "liger"), kw, graph=rows <= 256)
            for rows in ((4,) if small else (256, 4096))]


def _rope_cells(small: bool) -> list[Cell]:
    variants = {"default": _with(rotary_embedding_triton)}
    for label, cfg in (("block_h32/w8", RopeConfig(block_h=32, num_warps=8)),
                       ("all_heads/w4 (Liger's grid)", RopeConfig(all_heads=True, num_warps=4)),
                       ("all_heads/w8", RopeConfig(all_heads=True, num_warps=8)),
                       ("all_heads/w2", RopeConfig(all_heads=True, num_warps=2))):
        variants[label] = _with(rotary_embedding_triton, config=cfg)
    kw = {"q_heads": 4, "kv_heads": 2, "head_dim": 32} if small else {}
    return [Cell("rotary_embedding", rows, variants, ("liger",), kw) for rows in ((4,) if small else (32768,))]


def _act_variants(fn: Callable) -> dict[str, Builder]:
    configs = {"unmasked+int32": ActConfig(unmasked=True, int32=True),
               "block2048/w4": ActConfig(block=2048, warps=4),
               "fast_erf": ActConfig(fast_erf=True),
               "fast_erf+unmasked+int32": ActConfig(fast_erf=True, unmasked=True, int32=True),
               "fast_erf+block2048+unmasked+int32": ActConfig(block=2048, fast_erf=True, unmasked=True, int32=True)}
    return {"default": _with(fn), **{label: _with(fn, config=cfg) for label, cfg in configs.items()}}


def _act_cells(small: bool) -> list[Cell]:
    kw = {"intermediate": 256} if small else {}
    gelu_rows = (4,) if small else (256, 4096, 32768)
    gated_rows = (4,) if small else (256, 4096)
    # silu_and_mul (0.99x torch.compile at 4096 rows): the gated kernel's int64 row division is ~14 of
    # its ~58 SASS instructions per element for sm_90 (int32 path: 44)
    silu_variants = {"default": _with(silu_and_mul_triton),
                     "unmasked+int32": _with(silu_and_mul_triton, config=ActConfig(unmasked=True, int32=True))}
    return ([Cell("gelu", r, _act_variants(gelu_triton), ("eager",), kw, graph=r <= 256) for r in gelu_rows]
            + [Cell("gelu_and_mul", r, _act_variants(gelu_and_mul_triton), ("eager", "compile"), kw, graph=r <= 256)
               for r in gated_rows]
            + [Cell("silu_and_mul", 4 if small else 4096, silu_variants, ("compile", "liger"), kw)])


def _softmax_cells(small: bool) -> list[Cell]:
    def wide(**kw: Any) -> Builder:
        return _with(softmax_module.softmax_triton, wide=softmax_module.WideConfig(**kw))

    variants = {"default": _with(softmax_module.softmax_triton),
                "recip": wide(recip=True),
                "recip+32768/w32": wide(recip=True, warps=32),
                "recip+16384/w16/2 per SM/maxnreg64": wide(recip=True, block=16384, maxnreg=64),
                "recip+8192/w8/2 per SM/maxnreg128": wide(recip=True, block=8192, warps=8, maxnreg=128),
                "recip+prefetch+16384/w16": wide(recip=True, prefetch=True, block=16384),
                "recip+prefetch+16384/w32": wide(recip=True, prefetch=True, block=16384, warps=32),
                "recip+prefetch+lane_sum+16384/w32": wide(recip=True, prefetch=True, lane_sum=True, block=16384,
                                                          warps=32),
                "info: log_softmax default (no division)": _with(softmax_module.log_softmax_triton)}
    if small:  # 8 rows >= the 4 "SMs" assumed on CPU, wider than NARROW_MAX: the wide kernel
        variants = {k: v for k, v in variants.items() if "maxnreg" not in k}
    kw = {"vocab": 16500} if small else {}
    # outputs checked at 1024 rows (still the wide kernel): 32768 rows are 10 GB per tensor
    return [Cell("softmax", 8 if small else 32768, variants, (), kw, check_rows=None if small else 1024)]


def _sample_cells(small: bool) -> list[Cell]:
    # not swept: SampleConfig(bitonic=True), 3,096 straight-line SASS instructions per thread for sm_90
    # where exact_rounds runs 20 rounds of 133 (2,660), and a 7 s compile
    exact = dict(exact_rounds=True, fast_key=True)
    configs = {"exact_rounds": SampleConfig(exact_rounds=True),
               "exact_rounds+fast_key": SampleConfig(**exact),
               "exact_rounds+approx_log": SampleConfig(**exact, approx_log=True),
               "exact_rounds+approx_log+lanes2": SampleConfig(**exact, approx_log=True, lanes=2),
               "exact_rounds+approx_log+lanes2+draw 4096/w8": SampleConfig(**exact, approx_log=True, lanes=2,
                                                                           block=4096, warps=8)}
    variants = {"default": _with(sample_triton), **{k: _with(sample_triton, config=c) for k, c in configs.items()}}
    return [Cell("sample", 2 if small else 4096, variants, ("compile",), extra=_sample_parts)]


def _sample_parts(cell: Cell, device: str, timing: dict) -> list[dict]:
    """Where the default sampler's time goes: thresholds (each variant), noise, draw kernel."""
    case = ops.get("sample").bench_case(cell.rows, torch.bfloat16, device)
    logits, temperature, top_k, top_p, min_p = case.args
    params, k_max = sampling_module._fused_params(logits, temperature, top_k, top_p, min_p)
    parts: dict[str, Call] = {
        f"thresholds {label}": (lambda c=cfg: sampling_module._fused_thresholds(logits, params, k_max, c))
        for label, cfg in (("default", SampleConfig()), ("exact_rounds", SampleConfig(exact_rounds=True)))}
    parts["noise (torch exponential_)"] = lambda: sampling_module._noise(logits, case.kwargs["generator"], None)
    parts["thresholds+noise+draw (default)"] = lambda: sample_triton(*case.args, **case.kwargs)
    rows = []
    for label, fn in parts.items():
        rows.append({"cell": cell.name, "impl": f"{PART} {label}", "us": _time(fn, device, timing)})
    return rows


# in order of the expected gain per second of GPU time: a stage cut short by its timeout keeps the rows
# written so far. Only the anchors that beat us are timed (each torch.compile anchor costs seconds).
CELLS: dict[str, Callable[[bool], list[Cell]]] = {
    "gelu": _act_cells, "softmax": _softmax_cells, "add_rms_norm": _norm_cells,
    "rotary_embedding": _rope_cells, "sample": _sample_cells}


def _time(fn: Call, device: str, timing: dict, graph: bool = False) -> float:
    with torch.inference_mode():
        return time_us(fn, device, cuda_graph=graph, **timing)


def _outputs(result: Any) -> list[torch.Tensor]:
    items = result if isinstance(result, (tuple, list)) else (result,)
    return [t.detach().clone() for t in items if isinstance(t, torch.Tensor)]


def _check(got: list[torch.Tensor], want: list[torch.Tensor]) -> str:
    """'ok' when every output matches the default's within the tests' tolerance (exact for integers)."""
    for g, w in zip(got, want):
        if g.shape != w.shape:
            return f"shape {tuple(g.shape)} != {tuple(w.shape)}"
        if not g.is_floating_point():
            differ = int((g != w).sum())
            if differ:
                return f"{differ} of {g.numel()} differ"
            continue
        try:
            torch.testing.assert_close(g, w, rtol=RESOLUTION.get(w.dtype, 0.0), atol=ATOL, equal_nan=True)
        except AssertionError as err:
            lines = [line.strip() for line in str(err).splitlines() if line.strip()]
            return "MISMATCH: " + "; ".join(lines[1:3])[:100]
    return "ok"


def _error(err: Exception) -> str:
    return f"{type(err).__name__}: {str(err).splitlines()[0][:100] if str(err) else ''}"


def run_cell(cell: Cell, device: str, timing: dict, record: Callable[[dict], None]) -> list[dict]:
    """Time and check every variant, then the component rows, then the anchors of one cell; each row is
    recorded as soon as it is timed (a stage cut short keeps them). A failure is a note, not fatal."""
    entry = ops.get(cell.op)
    on_gpu = device == "cuda"

    def fresh(rows: int = cell.rows) -> BenchCase:
        torch.manual_seed(0)  # identical inputs for everyone: several ops write into theirs
        return entry.bench_case(rows, torch.bfloat16, device, **cell.case_kwargs)

    anchors = implementations(entry, on_gpu)
    timed_anchors = {a: anchors[a] for a in cell.anchors if a in anchors and (on_gpu or a == "eager")}
    missing = [a for a in cell.anchors if a not in anchors]
    rows: list[dict] = []
    reference = None
    for impl, builder in cell.variants.items():
        row = {"cell": cell.name, "impl": impl}
        if not impl.startswith(INFO):
            try:
                got = _outputs(builder(fresh(cell.check_rows or cell.rows))())
                reference = got if reference is None else reference
                row["check"] = _check(got, reference)
            except Exception as err:  # noqa: BLE001 -- one broken variant must not stop the sweep
                row["check"] = _error(err)
            got = None
        rows.append(_timed(row, builder, fresh, device, timing, cell.graph and on_gpu, record))
    if cell.extra is not None:
        try:
            for row in cell.extra(cell, device, timing):
                record(row)
                rows.append(row)
        except Exception as err:  # noqa: BLE001
            rows.append({"cell": cell.name, "impl": "parts", "notes": _error(err)})
    for name, builder in timed_anchors.items():
        rows.append(_timed({"cell": cell.name, "impl": f"anchor: {name}"}, builder, fresh, device, timing,
                           cell.graph and on_gpu, record))
    nbytes = fresh().bytes_moved
    copy = copy_time_us(nbytes, device, **timing) if nbytes else None
    default = rows[0].get("us")
    best = min((r["us"] for r in rows if r["impl"].startswith("anchor") and r.get("us")), default=None)
    for r in rows:
        if r.get("us") and not r["impl"].startswith(PART):
            r.update({"vs_default": default / r["us"] if default else None,
                      "vs_best_anchor": best / r["us"] if best else None,
                      "%copy": 100 * copy / r["us"] if copy else None})
            record(r)
    rows.append({"cell": cell.name, "impl": "copy (same bytes)", "us": copy,
                 "notes": "anchors not importable: " + ", ".join(missing) if missing else ""})
    record(rows[-1])
    return rows


def _timed(row: dict, builder: Builder, fresh: Callable[[], BenchCase], device: str, timing: dict, graph: bool,
           record: Callable[[dict], None]) -> dict:
    """row with 'us' (and 'graph_us') of builder's call on fresh inputs, or the error in 'notes'."""
    try:
        row["us"] = _time(builder(fresh()), device, timing)
        if graph:
            row["graph_us"] = _time(builder(fresh()), device, timing, graph=True)
    except Exception as err:  # noqa: BLE001 -- one broken variant or anchor must not stop the sweep
        row["notes"] = _error(err)
    if device == "cuda":
        torch.cuda.empty_cache()
    record(row)
    return row


def summarize(rows: list[dict]) -> list[dict]:
    """Per cell: our default, the fastest variant whose output matched, the fastest anchor."""
    out = []
    for cell in dict.fromkeys(r["cell"] for r in rows):
        mine = [r for r in rows if r["cell"] == cell and "vs_default" in r and not r["impl"].startswith("anchor")]
        ok = [r for r in mine if r.get("check") == "ok" and r.get("us")]
        anchors = [r for r in rows if r["cell"] == cell and r["impl"].startswith("anchor") and r.get("us")]
        if not ok:
            continue
        best, anchor = min(ok, key=lambda r: r["us"]), min(anchors, key=lambda r: r["us"], default=None)
        out.append({"cell": cell, "default_us": ok[0]["us"] if ok[0]["impl"] == "default" else None,
                    "best_variant": best["impl"], "best_us": best["us"], "best_vs_default": best["vs_default"],
                    "best_anchor": anchor["impl"].removeprefix("anchor: ") if anchor else None,
                    "anchor_us": anchor["us"] if anchor else None,
                    "default_vs_anchor": ok[0].get("vs_best_anchor"), "best_vs_anchor": best.get("vs_best_anchor"),
                    "best_%copy": best.get("%copy")})
    return out


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT") or "/tmp/llm-ops-sweep", help="results folder")
    parser.add_argument("--only", default="", help=f"comma-separated groups of cells: {', '.join(CELLS)} "
                        "(gelu also runs gelu_and_mul and silu_and_mul)")
    parser.add_argument("--quick", action="store_true", help="short timings (and tiny shapes on CPU)")
    parser.add_argument("--max-seconds", type=float, default=110,
                        help="start no new cell after this long (the summary is still written)")
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    names = [n for n in args.only.split(",") if n] or list(CELLS)
    unknown = [n for n in names if n not in CELLS]
    if unknown:
        raise ValueError(f"--only must name cells of {', '.join(CELLS)}, got {', '.join(unknown)}")
    timing = {"warmup_ms": 5, "rep_ms": 20} if args.quick or device == "cpu" else {}
    meta = {"device": device_description(device), "quick": args.quick, **torch_versions(),
            "note": "speed-ups are over our default ('vs_default') and over the fastest anchor timed here"}
    results = ResultsFile("llm-sweep", meta, key=("cell", "impl"), out_dir=args.out, columns=COLUMNS)
    start, out = time.perf_counter(), []
    cells = [cell for name in names for cell in CELLS[name](device == "cpu")]
    for i, cell in enumerate(cells):
        if time.perf_counter() - start > args.max_seconds:
            print(f"--max-seconds {args.max_seconds:.0f} reached: skipped {', '.join(c.name for c in cells[i:])}")
            break
        t0 = time.perf_counter()
        rows = run_cell(cell, device, timing, results.add)
        out += rows
        print(markdown_table(rows, COLUMNS))
        print(f"{cell.name}: {time.perf_counter() - t0:.1f} s", flush=True)
    summary = markdown_table(summarize(out))
    Path(results.md_path).with_name(Path(results.md_path).stem + "-summary.md").write_text(summary)
    print(summary)
    print(f"sweep done in {time.perf_counter() - start:.0f} s; written: {results.json_path}, {results.md_path} "
          "and the summary beside them")
    return out


if __name__ == "__main__":
    main()
