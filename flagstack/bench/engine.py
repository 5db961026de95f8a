"""`flagstack bench engine`: the inference engine against HF transformers in the same process.

Cases (sizes from `default_plan`; requests are seeded, token ids uniform over the vocabulary):
- offline: every request of the workload through `LLM.generate` at once (continuous batching),
  EOS ignored: output and total tokens per second, wall time. Engine only.
- batch K: the lengths of the first K requests (fresh token ids, so that the offline run cannot hit
  their blocks in the prefix cache), engine vs HF `generate` as one left-padded batch (HF generates
  the longest output for every row; only the requested tokens count).
- prefill L: one prompt of L tokens, one output token: prompt tokens per second.
- decode bB: B prompts of equal length generating N tokens; decode tokens per second is
  B * (N - 1) / (time(N tokens) - time(1 token)), the same formula for both sides.
Greedy decoding throughout. Each engine row also gets a roofline (engine_roofline.py) over the steps
the engine actually ran; each HF row over the steps of its padded batch. GPU peak memory: since the
engine was built (its KV pool takes what the GPU has left, by design), per case for HF.
On CUDA the default model is the bundled Qwen3-4B config with random weights (labelled so); on CPU
the embedded SmolLM2-135M GGUF against HF loading the same GGUF.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import time
import traceback
from dataclasses import asdict, dataclass, replace
from typing import Callable

import torch
import transformers

from flagstack.bench.common import (ResultsFile, copy_time_us, default_device, device_description, markdown_table,
                                    time_us, torch_versions)
from flagstack.bench.engine_hf import hf_generate_s, load_hf_model
from flagstack.bench.engine_roofline import DeviceCeiling, ModelCost, SeqStep, decode_steps, padded_batch_steps

GPU_MODEL = "qwen3-4b"
ENGINE, HF_EAGER, HF_COMPILE = "flagstack", "hf eager (sdpa)", "hf static cache + compile"
COLUMNS = ("case", "impl", "weights", "batch", "input", "output", "seconds", "tok/s", "total tok/s", "peak GB",
           "floor ms", "%roofline", "flagstack x", "notes")
SUMMARY_COLUMNS = ("case", "impl", "seconds", "tok/s", "total tok/s", "peak GB", "%roofline", "flagstack x")


@dataclass(frozen=True)
class Plan:
    """Sizes of one benchmark run."""

    num_requests: int
    input_range: tuple[int, int]
    output_range: tuple[int, int]
    offline: bool  # time the whole workload through the engine
    batch_size: int  # first K requests: engine vs HF padded generate (0: skip)
    batch_output: int | None  # output tokens per request in that case (None: each request's own)
    prefill_lens: tuple[int, ...]
    decode_input: int
    decode_output: int
    decode_batches: tuple[int, ...]
    hf: bool = True
    hf_compile: bool = False  # also HF static cache + torch.compile on decode b1


def default_plan(device: str, quick: bool = False, num_requests: int | None = None) -> Plan:
    """The issue's workloads: on CUDA the Qwen3-4B ones (quick: about a quarter), on CPU a few minutes' worth."""
    if device == "cuda":
        plan = Plan(256, (100, 1024), (100, 1024), offline=True, batch_size=64, batch_output=256,
                    prefill_lens=(), decode_input=128, decode_output=256, decode_batches=(1,), hf_compile=True)
        if quick:
            plan = replace(plan, num_requests=64, batch_size=16, batch_output=128, decode_output=128,
                           hf_compile=False)
    else:
        plan = Plan(32, (64, 512), (32, 128), offline=False, batch_size=32, batch_output=None,
                    prefill_lens=(512, 2048), decode_input=128, decode_output=64, decode_batches=(1, 8))
        if quick:
            plan = replace(plan, num_requests=8, batch_size=8, prefill_lens=(512,), decode_output=16)
    if num_requests is not None:
        if num_requests < 1:
            raise ValueError(f"num_requests must be >= 1, got {num_requests}")
        plan = replace(plan, num_requests=num_requests, batch_size=min(plan.batch_size, num_requests))
    return plan


@dataclass(frozen=True)
class BenchRequest:
    prompt: list[int]
    output_len: int


def _check_range(name: str, bounds: tuple[int, int]) -> None:
    if len(bounds) != 2 or not 1 <= bounds[0] <= bounds[1]:
        raise ValueError(f"{name} must be (low, high) with 1 <= low <= high, got {bounds}")


def random_prompts(batch: int, length: int, vocab_size: int, seed: int) -> list[list[int]]:
    """`batch` prompts of `length` token ids uniform in [0, vocab_size), seeded."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (batch, length), generator=gen).tolist()


def sample_requests(num_requests: int, input_range: tuple[int, int], output_range: tuple[int, int],
                    vocab_size: int, seed: int) -> list[BenchRequest]:
    """Requests with input and output lengths uniform in the inclusive ranges, token ids uniform, seeded."""
    if num_requests < 1:
        raise ValueError(f"num_requests must be >= 1, got {num_requests}")
    if vocab_size < 1:
        raise ValueError(f"vocab_size must be >= 1, got {vocab_size}")
    _check_range("input_range", input_range)
    _check_range("output_range", output_range)
    gen = torch.Generator().manual_seed(seed)
    inputs = torch.randint(input_range[0], input_range[1] + 1, (num_requests,), generator=gen).tolist()
    outputs = torch.randint(output_range[0], output_range[1] + 1, (num_requests,), generator=gen).tolist()
    return [BenchRequest(torch.randint(0, vocab_size, (n,), generator=gen).tolist(), out)
            for n, out in zip(inputs, outputs)]


@dataclass(frozen=True)
class Case:
    """One measured workload. kind: 'batch' (requests to completion), 'prefill' (one output token),
    'decode' (N tokens, minus the time of the same with one token: `baseline` prompts, fresh so the
    prefix cache cannot serve them)."""

    name: str
    kind: str
    requests: tuple[BenchRequest, ...]
    anchors: tuple[str, ...]
    baseline: tuple[tuple[int, ...], ...] = ()

    @property
    def input_tokens(self) -> int:
        return sum(len(r.prompt) for r in self.requests)

    @property
    def output_tokens(self) -> int:
        return sum(r.output_len for r in self.requests)

    @property
    def rated_tokens(self) -> int:
        """The tokens the case's rate counts: prompt tokens (prefill), decode steps' tokens, or outputs."""
        if self.kind == "prefill":
            return self.input_tokens
        if self.kind == "decode":
            return self.output_tokens - len(self.requests)
        return self.output_tokens


def build_cases(plan: Plan, requests: list[BenchRequest], vocab_size: int, seed: int) -> list[Case]:
    """The plan's cases over the workload; extra prompts get their own seeds (seed + 1, 2, ...)."""
    hf = (HF_EAGER,) if plan.hf else ()
    lo_in, hi_in = plan.input_range
    lo_out, hi_out = plan.output_range
    cases = []  # cheapest first: a run cut short by a time limit keeps the most rows
    extra = iter(range(seed + 1, seed + 1000))
    for batch in plan.decode_batches:
        prompts = random_prompts(batch, plan.decode_input, vocab_size, next(extra))
        baseline = tuple(map(tuple, random_prompts(batch, plan.decode_input, vocab_size, next(extra))))
        anchors = hf + ((HF_COMPILE,) if plan.hf and plan.hf_compile and batch == 1 else ())
        cases.append(Case(f"decode b{batch} {plan.decode_input}+{plan.decode_output}", "decode",
                          tuple(BenchRequest(p, plan.decode_output) for p in prompts), anchors, baseline))
    for length in plan.prefill_lens:
        (prompt,) = random_prompts(1, length, vocab_size, next(extra))
        cases.append(Case(f"prefill {length}", "prefill", (BenchRequest(prompt, 1),), hf))
    if plan.batch_size:  # the lengths of the first K requests, fresh ids: the offline run must not hit their blocks
        out = plan.batch_output
        gen = torch.Generator().manual_seed(next(extra))
        subset = tuple(BenchRequest(torch.randint(0, vocab_size, (len(r.prompt),), generator=gen).tolist(),
                                    out or r.output_len) for r in requests[:plan.batch_size])
        label = f"out {out}" if out else f"out {lo_out}-{hi_out}"
        cases.append(Case(f"batch {len(subset)} req, in {lo_in}-{hi_in}, {label}", "batch", subset, hf))
    if plan.offline:
        cases.append(Case(f"offline {len(requests)} req, in {lo_in}-{hi_in}, out {lo_out}-{hi_out}", "batch",
                          tuple(requests), ()))
    return cases


@dataclass
class Measurement:
    seconds: float
    floor_s: float
    note: str = ""


def _sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


class EngineTimer:
    """Runs prompts through an LLM, greedy with EOS ignored, recording each step's shape (the runner's
    `launch` is wrapped on this instance) for the roofline."""

    def __init__(self, llm) -> None:
        self.llm, self.steps = llm, []
        runner = llm.engine.runner
        launch = runner.launch

        def recording_launch(batch, eos_token_ids):
            self.steps.append([SeqStep(s.num_computed_tokens, n, s.num_computed_tokens + n == len(s))
                               for s, n in zip(batch.seqs, batch.num_new_tokens)])
            return launch(batch, eos_token_ids)
        runner.launch = recording_launch

    def run(self, prompts: list[list[int]], output_lens: list[int]) -> tuple[float, list[list[SeqStep]]]:
        """Seconds to generate exactly output_lens[i] tokens for prompts[i], and the steps taken."""
        from flagstack.engine.config import SamplingParams

        params = [SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True) for n in output_lens]
        self.steps = steps = []
        device = str(self.llm.engine.device)
        _sync(device)
        start = time.perf_counter()
        outputs = self.llm.generate([list(p) for p in prompts], params)
        _sync(device)
        seconds = time.perf_counter() - start
        got = [len(o.outputs[0].token_ids) for o in outputs]
        if got != list(output_lens):
            raise RuntimeError(f"engine returned {got} tokens, expected {list(output_lens)}")
        return seconds, steps


def measure_engine(timer: EngineTimer, case: Case, cost: ModelCost, ceiling: DeviceCeiling) -> Measurement:
    prompts = [r.prompt for r in case.requests]
    outputs = [r.output_len for r in case.requests]
    if case.kind == "decode":
        # Warm-up first: the first run of a shape compiles Triton kernels, which must not sit in the
        # baseline that is subtracted (it made a 255-step decode look like 42 ms on the H100). The
        # warm-up prompts are rotated so the timed baseline gets no prefix-cache hit from them.
        timer.run([list(p[1:]) + [p[0]] for p in case.baseline], [1] * len(prompts))
        base_s, _ = timer.run([list(p) for p in case.baseline], [1] * len(prompts))
        full_s, steps = timer.run(prompts, outputs)
        decode = [s for s in steps if all(seq.new == 1 for seq in s)]
        return Measurement(full_s - base_s, ceiling.floor_s(cost, decode), f"{len(decode)} decode steps")
    seconds, steps = timer.run(prompts, outputs)
    return Measurement(seconds, ceiling.floor_s(cost, steps), f"{len(steps)} steps")


def measure_hf(model: torch.nn.Module, case: Case, impl: str, cost: ModelCost,
               ceiling: DeviceCeiling) -> Measurement:
    kwargs = {"cache_implementation": "static"} if impl == HF_COMPILE else {}
    prompts = [r.prompt for r in case.requests]
    lens = [len(p) for p in prompts]
    new = max(r.output_len for r in case.requests)
    if impl == HF_COMPILE:  # compile (on CUDA, HF compiles the decode forward of a static cache) outside the timing
        hf_generate_s(model, prompts, new, **kwargs)
    if case.kind == "decode":
        base_s = hf_generate_s(model, [list(p) for p in case.baseline], 1, **kwargs)
        full_s = hf_generate_s(model, prompts, new, **kwargs)
        return Measurement(full_s - base_s, ceiling.floor_s(cost, decode_steps(len(prompts), lens[0], new)))
    seconds = hf_generate_s(model, prompts, new, **kwargs)
    note = ""
    if case.kind == "batch" and (len(set(lens)) > 1 or new * len(prompts) != case.output_tokens):
        note = f"padded to {max(lens)} tokens, {new} generated per row, the {case.output_tokens} requested counted"
    return Measurement(seconds, ceiling.floor_s(cost, padded_batch_steps(lens, new)), note)


def make_row(case: Case, impl: str, weights: str, result: Measurement | None, peak_gb: float | None,
             note: str) -> dict:
    """A results row; a failed measurement (None) keeps the case's sizes and says why in notes."""
    row = {"case": case.name, "impl": impl, "kind": case.kind, "weights": weights, "batch": len(case.requests),
           "input": case.input_tokens, "output": case.output_tokens, "seconds": None, "tok/s": None,
           "total tok/s": None, "peak GB": peak_gb, "floor ms": None, "%roofline": None, "flagstack x": None,
           "notes": note}
    if result is not None and result.seconds > 0:
        row.update({"seconds": result.seconds, "tok/s": case.rated_tokens / result.seconds,
                    "floor ms": 1e3 * result.floor_s, "%roofline": 100 * result.floor_s / result.seconds})
        if case.kind == "batch":
            row["total tok/s"] = (case.input_tokens + case.output_tokens) / result.seconds
        row["notes"] = "; ".join(n for n in (result.note, note) if n)
    elif result is not None:  # decode: N tokens took no longer than 1 (timing noise dwarfs the decode steps)
        row["notes"] = f"no rate: measured {result.seconds:.3g} s"
    return row


def measure_ceiling(device: str) -> DeviceCeiling:
    """Copy bandwidth (1 GiB on CUDA, 256 MiB on CPU) and GEMM throughput (bf16 8192^3 / fp32 1024^3; on
    CPU the faster of a @ b and the engine's GEMM, oneDNN on a packed weight, which outran MKL's a @ b and
    put prefill at ~110% of a roofline drawn from a @ b alone)."""
    cuda = torch.device(device).type == "cuda"
    nbytes = 1 << 30 if cuda else 1 << 28
    copy_s = copy_time_us(nbytes, device) * 1e-6
    n, dtype = (8192, torch.bfloat16) if cuda else (1024, torch.float32)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    gemm_s = time_us(lambda: a @ b, device) * 1e-6
    if not cuda:
        from flagstack.engine.models.layers import linear

        with torch.inference_mode():
            gemm_s = min(gemm_s, time_us(lambda: linear(a, b), device) * 1e-6)
    del a, b
    return DeviceCeiling(nbytes / copy_s, 2 * n ** 3 / gemm_s)


def parse_engine_args(pairs: list[str]) -> dict:
    """KEY=VALUE strings -> EngineConfig keyword arguments (values read as JSON where they parse)."""
    from dataclasses import fields

    from flagstack.engine.config import EngineConfig

    known = {f.name for f in fields(EngineConfig)}
    kwargs = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or key not in known:
            raise ValueError(f"--engine-arg must be KEY=VALUE with KEY an EngineConfig field "
                             f"({', '.join(sorted(known))}), got '{pair}'")
        try:
            kwargs[key] = json.loads(text)
        except json.JSONDecodeError:
            kwargs[key] = text
    return kwargs


def _peak_gb(device: str) -> float | None:
    return torch.cuda.max_memory_allocated() / 1e9 if torch.device(device).type == "cuda" else None


def _reset_peak(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats()


def _free(device: str) -> None:
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


def _attempt(what: str, fn: Callable[[], Measurement]) -> tuple[Measurement | None, str]:
    """Run a measurement; a failure becomes a note (the run goes on to the other rows)."""
    try:
        return fn(), ""
    except Exception as err:  # noqa: BLE001 - any failure of one anchor must not lose the others
        print(f"  {what} failed:\n{traceback.format_exc(limit=3)}", flush=True)
        return None, f"failed: {type(err).__name__}: {str(err).splitlines()[0][:160] if str(err) else ''}"


def weights_label(model: str | None, load_format: str) -> str:
    if load_format == "dummy":
        return "random weights"
    if model is None:
        return "SmolLM2-135M GGUF Q4_1 (dequantized)"
    return "GGUF (dequantized)" if model.endswith(".gguf") else "checkpoint"


def targets(rows: list[dict], device: str) -> list[str]:
    """The issue's targets, each 'met' or 'MISSED' with the numbers behind it."""
    by = {(r["case"], r["impl"]): r for r in rows}
    lines = []

    def check(label: str, ok: bool) -> None:
        lines.append(f"{'met   ' if ok else 'MISSED'} {label}")
    for (case, impl), row in by.items():
        if impl != ENGINE or row["tok/s"] is None:
            continue
        if torch.device(device).type == "cuda":
            if row["kind"] == "decode" and row["batch"] == 1:
                check(f"{case}: {row['tok/s']:.0f} tok/s >= 320", row["tok/s"] >= 320)
            if case.startswith("offline"):
                check(f"{case}: {row['tok/s']:.0f} output tok/s >= 10000", row["tok/s"] >= 10000)
                check(f"{case}: {row['%roofline']:.0f}% of roofline >= 70%", row["%roofline"] >= 70)
            continue
        hf = by.get((case, HF_EAGER))
        if hf is None or not hf["tok/s"]:
            continue
        need = 3.0 if row["kind"] == "batch" else 1.0
        ratio = row["tok/s"] / hf["tok/s"]
        check(f"{case}: flagstack {ratio:.2f}x HF (need >= {need:g}x)", ratio >= need)
    return lines


def run(args: argparse.Namespace, plan: Plan | None = None) -> list[dict]:
    """Run the cases (skipping rows already in today's results file unless args.fresh); returns the rows."""
    from flagstack.engine.llm import LLM
    from flagstack.engine.loader import bundled_configs

    device = args.device or default_device()
    plan = plan or default_plan(device, args.quick, args.num_requests)
    plan = replace(plan, hf=plan.hf and not args.no_hf, hf_compile=plan.hf_compile and not args.no_compile)
    engine_kwargs = parse_engine_args(args.engine_arg or [])
    model = args.model or (GPU_MODEL if torch.device(device).type == "cuda" else None)
    load_format = "dummy" if model in bundled_configs() else "auto"
    weights = weights_label(model, load_format)
    if device == "cpu" and args.threads:
        torch.set_num_threads(args.threads)

    ceiling = measure_ceiling(device)
    _reset_peak(device)
    load_start = time.perf_counter()
    llm = LLM(model, device=device, load_format=load_format, **engine_kwargs)
    load_s = time.perf_counter() - load_start
    loaded, runner = llm.engine.loaded, llm.engine.runner
    config, dtype = loaded.hf_config, loaded.dtype
    cost = ModelCost.from_config(config, dtype.itemsize, runner.cache_dtype.itemsize)
    requests = sample_requests(plan.num_requests, plan.input_range, plan.output_range, config.vocab_size, args.seed)
    cases = build_cases(plan, requests, config.vocab_size, args.seed)

    meta = {"device": device_description(device), "mode": "CPU" if device == "cpu" else "GPU",
            "model": model or "embedded SmolLM2-135M-Instruct GGUF", "weights": weights,
            "dtype": str(dtype).removeprefix("torch."), **torch_versions(), "transformers": transformers.__version__,
            "plan": asdict(plan), "seed": args.seed, "engine_args": engine_kwargs, "decoding": "greedy, EOS ignored",
            "copy GB/s": round(ceiling.bytes_per_s / 1e9, 1), "GEMM TFLOP/s": round(ceiling.flops_per_s / 1e12, 2),
            "engine load s": round(load_s, 1), "weights GB (step read)": round(cost.weight_bytes / 1e9, 3),
            "kv blocks": runner.num_blocks, "kv cache GB": round(runner.num_blocks * runner.block_bytes / 1e9, 2),
            "kv cache dtype": str(runner.cache_dtype).removeprefix("torch.")}
    if device == "cpu":
        meta.update({"torch threads": torch.get_num_threads(), "load average at start": os.getloadavg()})
    if args.note:
        meta["note"] = args.note
    kind = "engine-quick" if args.quick else "engine"
    results = ResultsFile(kind, meta, key=("case", "impl"), out_dir=args.out_dir, columns=COLUMNS)
    pending = lambda case, impl: args.fresh or not results.has({"case": case.name, "impl": impl})  # noqa: E731
    print(f"bench engine on {results.meta['device']} ({meta['mode']}, {weights}); {len(cases)} cases", flush=True)

    def engine_case(case: Case) -> None:
        print(f"  {ENGINE}: {case.name}", flush=True)
        before = llm.get_stats()
        result, note = _attempt(case.name, lambda: measure_engine(timer, case, cost, ceiling))
        if result is not None and case.kind == "batch":
            after = llm.get_stats()
            cached = after["prompt_tokens_cached"] - before["prompt_tokens_cached"]
            note = f"{after['num_preemptions'] - before['num_preemptions']} preemptions, {cached} prompt tokens cached"
        results.add(make_row(case, ENGINE, weights, result, _peak_gb(device), note))

    def load_hf() -> torch.nn.Module:
        start = time.perf_counter()
        hf = load_hf_model(model, config, dtype, device)
        results.meta["hf load s"] = round(time.perf_counter() - start, 1)
        hf_generate_s(hf, [[1, 2, 3, 4]], 2)  # warm-up: library initialization
        return hf

    def hf_case(hf: torch.nn.Module, case: Case, impl: str) -> None:
        print(f"  {impl}: {case.name}", flush=True)
        _reset_peak(device)
        result, note = _attempt(f"{impl} {case.name}", lambda: measure_hf(hf, case, impl, cost, ceiling))
        results.add(make_row(case, impl, weights, result, _peak_gb(device), note))
        _free(device)

    timer = EngineTimer(llm)
    todo = [c for c in cases if pending(c, ENGINE)]
    hf_todo = [(c, impl) for impl in (HF_EAGER, HF_COMPILE) for c in cases if impl in c.anchors and pending(c, impl)]
    # CPU: both models fit, so each case runs on the engine and on HF back to back (a shared machine's
    # changing load then weighs on both alike); CUDA: the engine's KV pool fills the GPU, HF comes after it.
    together = torch.device(device).type != "cuda"
    if todo:  # warm-up (kernel compilation, autotuning) on prompts no case shares, so no prefix cache hits
        warm = [random_prompts(1, len(r.prompt), config.vocab_size, args.seed + 1000 + i)[0]
                for i, r in enumerate(requests[:2])]
        warm += random_prompts(1, plan.decode_input, config.vocab_size, args.seed + 999)
        timer.run(warm, [4] * len(warm))
        if torch.device(device).type == "cuda":
            # each batch case's prompt lengths once, fresh ids: their prefill steps use launch shapes (varlen
            # tiles for the step's mean query length) that Triton compiles on first use, which had put the
            # compile time of a fresh machine's first run into the 64-request case (~20% on an H200)
            for case in (c for c in todo if c.kind == "batch"):
                gen = torch.Generator().manual_seed(args.seed + 2000)
                prompts = [torch.randint(0, config.vocab_size, (len(r.prompt),), generator=gen).tolist()
                           for r in case.requests]
                timer.run(prompts, [2] * len(prompts))
    hf_model = load_hf() if together and hf_todo else None
    for case in cases:
        if case in todo:
            engine_case(case)
        for anchor_case, impl in hf_todo if together else ():
            if anchor_case == case:
                hf_case(hf_model, case, impl)
    del llm, timer, runner, loaded
    _free(device)
    if torch.device(device).type == "cuda":
        results.meta["GB allocated after freeing the engine"] = round(torch.cuda.memory_allocated() / 1e9, 2)
    if hf_todo and not together:
        hf_model = load_hf()
        for case, impl in hf_todo:
            hf_case(hf_model, case, impl)
    del hf_model
    _free(device)

    rows = results.rows
    engine_rate = {r["case"]: r["tok/s"] for r in rows if r["impl"] == ENGINE}
    for row in rows:
        if row["impl"] != ENGINE and row["tok/s"] and engine_rate.get(row["case"]):
            row["flagstack x"] = engine_rate[row["case"]] / row["tok/s"]
    if device == "cpu":
        results.meta.update({"load average at end": os.getloadavg(),
                             "max RSS GB": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2)})
    results.meta["targets"] = targets(rows, device)
    results.save()
    print(markdown_table(rows, SUMMARY_COLUMNS))
    for line in results.meta["targets"]:
        print(line)
    print("wrote " + ", ".join(str(p) for p in results.paths))
    return rows
