"""`flagstack bench ops`: every registered op with a bench_case, timed against its anchors.

On CUDA, per (op, rows, dtype) and in the same process: our Triton kernel, torch eager (the op's
reference), torch.compile(reference), FlagGems and Liger-Kernel where installed and where they have
the op (adapters below map our arguments to theirs; argument preparation is not timed), and a plain
device copy of the op's minimum bytes (the bandwidth ceiling). On CPU the Triton kernels only run
through the interpreter, which says nothing about speed, so only eager vs torch.compile is timed
there, and the results are labelled CPU. `--suite attention` hands over to
flagstack.bench.attention.run(args), which writes its own results file.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import inspect
import logging
from typing import Any, Callable

import torch

from flagstack.bench.common import (ResultsFile, copy_time_us, default_device, device_description, gbps,
                                    markdown_table, time_us, torch_versions)
from flagstack.ops.registry import BenchCase, OpEntry

GPU_ROWS, GPU_QUICK_ROWS = (1, 256, 4096, 32768), (1, 4096)
CPU_ROWS, CPU_QUICK_ROWS = (1, 256), (64,)
SUITES = ("llm", "challenge", "attention", "all")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
ANCHORS = ("eager", "compile", "flaggems", "liger")
COLUMNS = ("op", "rows", "dtype", "MB", "triton_us", "eager_us", "compile_us", "flaggems_us", "liger_us",
           "copy_us", "GB/s", "%copy", "best_anchor", "speedup", "notes")

Adapter = Callable[[dict], Callable[[], Any] | None]  # bound args -> timed call, None if not covered


def _halves(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    n = x.shape[-1] // 2
    return x[..., :n], x[..., n:]


def _rope_cos_sin(a: dict) -> tuple[torch.Tensor, torch.Tensor]:
    half = a["cos_sin_cache"].shape[-1] // 2
    return a["cos_sin_cache"][:, :half], a["cos_sin_cache"][:, half:]


def _liger(name: str) -> Callable:
    return getattr(importlib.import_module("liger_kernel.transformers.functional"), name)


def _flaggems(name: str) -> Callable:
    return getattr(importlib.import_module("flag_gems"), name)


def _qk(a: dict) -> tuple[torch.Tensor, torch.Tensor, int]:
    """q, k and head size of a rotary call (vLLM names them query/key)."""
    return a.get("query", a.get("q")), a.get("key", a.get("k")), a["head_size"]


def _liger_rms_norm(a: dict) -> Callable[[], Any]:
    fn = _liger("liger_rms_norm")
    return lambda: fn(a["x"], a["weight"], a["eps"])


def _liger_add_rms_norm(a: dict) -> Callable[[], Any]:
    fn = _liger("liger_fused_add_rms_norm")
    return lambda: fn(a["x"], a["residual"], a["weight"], a["eps"])


def _liger_glu(fn_name: str, approximate: str | None) -> Adapter:
    def adapter(a: dict) -> Callable[[], Any] | None:
        if approximate is not None and a.get("approximate", "none") != approximate:
            return None
        gate, up = (h.contiguous() for h in _halves(a["x"]))  # Liger wants two dense tensors
        fn = _liger(fn_name)
        return lambda: fn(gate, up)
    return adapter


def _liger_rope(a: dict) -> Callable[[], Any] | None:
    q, k, head = _qk(a)
    cos, sin = _rope_cos_sin(a)
    if not a.get("is_neox", True) or 2 * cos.shape[-1] != head:
        return None  # Liger rotates halves of the whole head only
    tokens = q.shape[0]
    # Liger takes HF's [batch, heads, tokens, head_dim] view and full-width cos/sin per token.
    qv, kv = (t.view(1, tokens, -1, head).transpose(1, 2) for t in (q, k))
    cos_t, sin_t = (torch.cat([c, c], -1)[a["positions"]].unsqueeze(0).to(q.dtype) for c in (cos, sin))
    fn = _liger("liger_rope")
    return lambda: fn(qv, kv, cos_t, sin_t)


LIGER_MAX_ROW = 65536  # Liger's softmax refuses wider rows (one block per row)


def _liger_softmax(a: dict) -> Callable[[], Any] | None:
    if a.get("dim", -1) not in (-1, a["x"].dim() - 1) or a.get("dtype") is not None:
        return None  # Liger normalizes the last dim, in the input dtype
    if a["x"].shape[-1] > LIGER_MAX_ROW:
        return None
    fn = _liger("liger_softmax")
    return lambda: fn(a["x"])


LIGER: dict[str, Adapter] = {
    "rms_norm": _liger_rms_norm,
    "add_rms_norm": _liger_add_rms_norm,
    "silu_and_mul": _liger_glu("liger_swiglu", None),
    "gelu_and_mul": _liger_glu("liger_geglu", "tanh"),  # Liger's GeGLU is the tanh form only
    "rotary_embedding": _liger_rope,
    "softmax": _liger_softmax,
}


def _flaggems_rms_norm(a: dict) -> Callable[[], Any]:
    fn = _flaggems("rms_norm")
    return lambda: fn(a["x"], [a["x"].shape[-1]], a["weight"], a["eps"])


def _flaggems_add_rms_norm(a: dict) -> Callable[[], Any]:
    fn = _flaggems("fused_add_rms_norm")
    return lambda: fn(a["x"], a["residual"], [a["x"].shape[-1]], a["weight"], a["eps"])


def _flaggems_glu(fn_name: str) -> Adapter:
    def adapter(a: dict) -> Callable[[], Any]:
        fn, (gate, up) = _flaggems(fn_name), _halves(a["x"])
        extra = () if "approximate" not in a else (a["approximate"],)
        return lambda: fn(gate, up, *extra)
    return adapter


def _flaggems_rope(a: dict) -> Callable[[], Any]:
    q, k, head = _qk(a)
    cos, sin = _rope_cos_sin(a)
    qv, kv = q.view(q.shape[0], -1, head), k.view(k.shape[0], -1, head)
    fn = _flaggems("apply_rotary_pos_emb")
    return lambda: fn(qv, kv, cos, sin, a["positions"], rotary_interleaved=not a.get("is_neox", True),
                      inplace=True)


def _flaggems_softmax(fn_name: str) -> Adapter:
    def adapter(a: dict) -> Callable[[], Any]:
        fn, x = _flaggems(fn_name), a["x"]
        half_to_float = a.get("dtype") == torch.float32 and x.dtype != torch.float32  # ATen's only upcast
        return lambda: fn(x, a.get("dim", -1), half_to_float)
    return adapter


def _flaggems_activation(fn_name: str) -> Adapter:
    def adapter(a: dict) -> Callable[[], Any]:
        fn = _flaggems(fn_name)
        kwargs = {"approximate": a["approximate"]} if "approximate" in a else {}
        return lambda: fn(a["x"], **kwargs)
    return adapter


def _flaggems_argmax(a: dict) -> Callable[[], Any]:
    fn = _flaggems("argmax")
    return lambda: fn(a["x"], a.get("dim", -1), a.get("keepdim", False))


def _flaggems_embedding(a: dict) -> Callable[[], Any]:
    fn = _flaggems("embedding")
    tensors = [v for v in a.values() if isinstance(v, torch.Tensor)]
    ids = next(t for t in tensors if not t.is_floating_point())
    weight = next(t for t in tensors if t.is_floating_point())
    return lambda: fn(weight, ids)


FLAGGEMS: dict[str, Adapter] = {
    "rms_norm": _flaggems_rms_norm,
    "add_rms_norm": _flaggems_add_rms_norm,
    "silu_and_mul": _flaggems_glu("silu_and_mul"),
    "gelu_and_mul": _flaggems_glu("gelu_and_mul"),
    "rotary_embedding": _flaggems_rope,
    "silu": _flaggems_activation("silu"),
    "gelu": _flaggems_activation("gelu"),
    "softmax": _flaggems_softmax("softmax"),
    "log_softmax": _flaggems_softmax("log_softmax"),
    "argmax": _flaggems_argmax,
    "embedding": _flaggems_embedding,
}


def suite_of(entry: OpEntry) -> str:
    """'attention', 'challenge' or 'llm', from the module that defines the op's reference."""
    module = entry.reference.__module__
    for suite in ("attention", "challenge"):
        if module.startswith(f"flagstack.ops.{suite}"):
            return suite
    return "llm"


def select_ops(names: list[str] | None, suite: str) -> list[OpEntry]:
    """The ops to time: the named ones, else every op of the suite that has a bench_case."""
    from flagstack import ops

    if names:
        return [ops.get(n) for n in names]
    wanted = {"llm", "challenge"} if suite == "all" else {suite}
    return [e for e in ops.all_ops() if e.bench_case is not None and suite_of(e) in wanted]


_COMPILED: dict[Callable, Callable] = {}


def _compiled(fn: Callable) -> Callable:
    """torch.compile(fn) specialized per shape, compiled once per process (later shapes recompile).

    The recompile limit is raised so a long --rows list never silently falls back to eager.
    """
    if fn not in _COMPILED:
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        torch._logging.set_logs(dynamo=logging.ERROR)  # graph-break warnings would drown the table
        _COMPILED[fn] = torch.compile(fn, dynamic=False)
    return _COMPILED[fn]


Builder = Callable[[BenchCase], Callable[[], Any] | None]  # inputs -> the call to time (None: not covered)


def _bound_args(entry: OpEntry, case: BenchCase) -> dict:
    """The case's arguments by the reference's parameter names, defaults filled in."""
    bound = inspect.signature(entry.reference).bind(*case.args, **case.kwargs)
    bound.apply_defaults()
    return dict(bound.arguments)


def implementations(entry: OpEntry, on_gpu: bool) -> dict[str, Builder]:
    """Implementation name -> builder of the zero-argument call to time, for those available here."""
    def plain(fn: Callable) -> Builder:
        return lambda case: lambda: fn(*case.args, **case.kwargs)

    ref = entry.reference
    builders: dict[str, Builder] = {}
    if on_gpu and entry.triton is not None:
        builders["triton"] = plain(entry.triton)
    builders["eager"] = plain(ref)
    builders["compile"] = lambda case: plain(_compiled(ref))(case)
    if not on_gpu:
        return builders
    if entry.name in FLAGGEMS and importlib.util.find_spec("flag_gems"):
        builders["flaggems"] = lambda case: FLAGGEMS[entry.name](_bound_args(entry, case))
    elif "flaggems" in entry.backends():  # same signature as ours (the challenge's ATen-style ops)
        builders["flaggems"] = lambda case: plain(entry.impl("flaggems"))(case)
    if entry.name in LIGER and importlib.util.find_spec("liger_kernel"):
        builders["liger"] = lambda case: LIGER[entry.name](_bound_args(entry, case))
    return builders


def bench_one(entry: OpEntry, rows: int, dtype: torch.dtype, device: str, timing: dict) -> dict | None:
    """Time every implementation of one op case; a failing implementation is noted, not fatal.

    None when the op's bench_case has no case for these rows/dtype (it raised ValueError).
    """
    on_gpu = device.startswith("cuda")
    dname = next(k for k, v in DTYPES.items() if v == dtype)
    row: dict = {"op": entry.name, "rows": rows, "dtype": dname}
    notes, times = [], {}
    try:
        nbytes = entry.bench_case(rows, dtype, device).bytes_moved
    except ValueError as err:
        print(f"  {entry.name} rows={rows} {dname}: no bench case ({err})")
        return None
    for impl, builder in implementations(entry, on_gpu).items():
        try:
            torch.manual_seed(0)  # fresh, identical inputs per implementation: some ops write into theirs
            fn = builder(entry.bench_case(rows, dtype, device))
            if fn is not None:
                with torch.inference_mode():
                    times[impl] = time_us(fn, device, **timing)
        except Exception as err:  # noqa: BLE001 -- one broken implementation must not stop the run
            notes.append(f"{impl}: {type(err).__name__}: {str(err).splitlines()[0][:80] if str(err) else ''}")
        fn = None  # drop this implementation's inputs before the next one makes its own
        if on_gpu:
            torch.cuda.empty_cache()
    copy_us = copy_time_us(nbytes, device, **timing) if nbytes else None
    ours = times.get("triton") if on_gpu else times.get("compile")
    anchors = {k: v for k, v in times.items() if k in ANCHORS and (on_gpu or k == "eager")}
    best = min(anchors, key=anchors.get) if anchors else None
    row.update({"MB": nbytes / 1e6, **{f"{k}_us": times.get(k) for k in ("triton", *ANCHORS)},
                "copy_us": copy_us, "GB/s": gbps(nbytes, ours) if ours and nbytes else None,
                "%copy": 100 * copy_us / ours if ours and copy_us else None, "best_anchor": best,
                "speedup": anchors[best] / ours if ours and best else None, "notes": "; ".join(notes)})
    return row


def shortfalls(rows: list[dict]) -> list[str]:
    """Rows that miss the issue's targets: >= 1.0x the best anchor at >= 256 rows, >= 85% of copy
    bandwidth at 32768 rows, and within 1.2x of the best anchor at 1 row."""
    misses = []
    for r in rows:
        where = f"{r['op']} rows={r['rows']} {r['dtype']}"
        if r.get("triton_us") is None:
            misses.append(f"{where}: Triton not timed ({r.get('notes') or 'no Triton implementation'})")
            continue
        speedup, pct = r.get("speedup"), r.get("%copy")
        if speedup is not None and r["rows"] >= 256 and speedup < 1.0:
            misses.append(f"{where}: {speedup:.2f}x the best anchor ({r['best_anchor']}), target >= 1.0x")
        if speedup is not None and r["rows"] == 1 and speedup < 1 / 1.2:
            misses.append(f"{where}: {speedup:.2f}x the best anchor ({r['best_anchor']}), target >= 0.83x")
        if pct is not None and r["rows"] >= 32768 and pct < 85:
            misses.append(f"{where}: {pct:.0f}% of copy bandwidth, target >= 85%")
    return misses


def run(args: argparse.Namespace) -> list[dict]:
    """Run the benchmark described by the CLI arguments; returns the rows (also written to files)."""
    device = default_device()
    on_gpu = device == "cuda"
    if args.dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of {', '.join(DTYPES)}, got '{args.dtype}'")
    rows_list = args.rows or (GPU_QUICK_ROWS if args.quick else GPU_ROWS) if on_gpu else \
        args.rows or (CPU_QUICK_ROWS if args.quick else CPU_ROWS)
    timing = {"warmup_ms": 5, "rep_ms": 20} if args.quick else {}
    graph = bool(getattr(args, "cuda_graph", False)) and on_gpu
    if graph:
        timing["cuda_graph"] = True
    out: list[dict] = []
    if args.suite in ("attention", "all") and not args.ops:
        if importlib.util.find_spec("flagstack.bench.attention") is None:
            print("bench: flagstack.bench.attention does not exist yet; attention suite skipped")
        else:
            attention = importlib.import_module("flagstack.bench.attention")
            attention_rows = attention.run(args)
            if attention_rows:
                print(markdown_table(attention_rows, getattr(attention, "COLUMNS", None)))
            out += attention_rows
        if args.suite == "attention":
            return out
    entries = select_ops(args.ops, args.suite)
    mode = ("cuda: Triton vs anchors" if on_gpu else
            "CPU: torch eager vs torch.compile only (Triton runs through the interpreter here and is not "
            "timed); 'speedup' is eager / compile")
    if graph:
        mode += " (CUDA-graph replay: GPU time with warm L2, no host overhead)"
    meta = {"device": device_description(device), "mode": mode, "quick": bool(args.quick), "cuda_graph": graph,
            **torch_versions()}
    kind = "ops" + ("-graph" if graph else "") + ("-quick" if args.quick else "")
    results = ResultsFile(kind, meta, key=("op", "rows", "dtype"), out_dir=args.out_dir, columns=COLUMNS)
    op_rows: list[dict] = []
    print(f"bench ops on {meta['device']} ({mode}); {len(entries)} ops x rows {list(rows_list)} x {args.dtype}")
    for entry in entries:
        for rows in rows_list:
            key = {"op": entry.name, "rows": rows, "dtype": args.dtype}
            if not args.fresh and results.has(key):
                print(f"  {entry.name} rows={rows}: already in {results.json_path}, skipped (--fresh re-times)")
                op_rows += [r for r in results.rows if all(r[k] == v for k, v in key.items())]
                continue
            row = bench_one(entry, rows, DTYPES[args.dtype], device, timing)
            if row is None:
                continue
            results.add(row)
            op_rows.append(row)
            print("  " + markdown_table([row], COLUMNS).splitlines()[-1])
    print()
    print(markdown_table(op_rows, COLUMNS))
    if on_gpu:
        misses = shortfalls(op_rows)
        print("targets: " + ("all met" if not misses else f"{len(misses)} short\n  " + "\n  ".join(misses)))
    print(f"written: {results.json_path} and {results.md_path}")
    return out + op_rows
