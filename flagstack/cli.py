"""`flagstack` command line: one entry point, a subcommand group per layer.

Each layer adds its subcommands in its own `add_*_commands` function below; the heavy imports
happen inside the handlers so `flagstack --help` stays fast.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Callable


def _ops_list(args: argparse.Namespace) -> int:
    from flagstack import ops

    for entry in ops.all_ops():
        print(f"{entry.name:24s} {', '.join(entry.backends()):32s} {entry.doc}")
    return 0


def _interpret_triton_without_cuda() -> None:
    """Without CUDA, run Triton kernels through the interpreter (must precede importing flagstack.ops)."""
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")


def _comma_list(kind: type) -> Callable[[str], list]:
    """An argparse type for '1,256,4096' or 'a,b': a bad value exits with status 2 and says why."""

    def parse(text: str) -> list:
        try:
            values = [kind(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected a comma-separated list of {kind.__name__}, got '{text}'") from None
        if not values or (kind is int and min(values) < 0):
            raise argparse.ArgumentTypeError(f"expected a non-empty list of non-negative values, got '{text}'")
        return values
    return parse


def _non_negative_int(text: str) -> int:
    """An argparse type for a count >= 0."""
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got '{text}'")
    return int(text)


def _ops_test(args: argparse.Namespace) -> int:
    _interpret_triton_without_cuda()
    from flagstack import ops
    from flagstack.ops import selftest

    dtypes = {"fp32": selftest.DTYPES[0], "fp16": selftest.DTYPES[1], "bf16": selftest.DTYPES[2]}
    bad = [d for d in args.dtypes if d not in dtypes]
    if bad:
        raise ValueError(f"--dtypes must be chosen from {', '.join(dtypes)}, got {', '.join(bad)}")
    entries = [ops.get(n) for n in args.ops] if args.ops else ops.all_ops()
    print(selftest.HEADER, flush=True)
    results = selftest.run_selftest(entries, args.rows, [dtypes[d] for d in args.dtypes],
                                    on_result=lambda r: print(selftest.format_result(r), flush=True))
    print(selftest.summary(results))
    return 0 if all(r.ok for r in results) else 1


def _ops_score(args: argparse.Namespace) -> int:
    _interpret_triton_without_cuda()
    from flagstack.bench.common import markdown_table
    from flagstack.ops import score

    scores, paths = score.score(args.ops, tests=not args.no_tests, speed=not args.no_speed, out_dir=args.out_dir,
                                workers=args.workers, fresh=args.fresh, note=args.note)
    print(markdown_table([s.summary() for s in scores.values()]))
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0 if all(s.failed == 0 for s in scores.values()) else 1


def add_ops_commands(sub: argparse._SubParsersAction) -> argparse._SubParsersAction:
    ops = sub.add_parser("ops", help="operator library").add_subparsers(dest="ops_cmd", required=True)
    ops.add_parser("list", help="every op with the backends it has").set_defaults(func=_ops_list)
    score = ops.add_parser("score", help="challenge ops scorecard: tests, test categories, speed vs torch/FlagGems")
    score.add_argument("--ops", type=_comma_list(str), help="comma-separated challenge op names (default: all)")
    score.add_argument("--no-tests", action="store_true", help="skip the correctness matrix")
    score.add_argument("--no-speed", action="store_true", help="skip the timings (they need CUDA anyway)")
    score.add_argument("--workers", type=_non_negative_int, default=0,
                       help="run the tests over this many pytest-xdist processes (needs pytest-xdist)")
    score.add_argument("--fresh", action="store_true", help="re-time ops already in today's report")
    score.add_argument("--note", help="a line for the report's header (kept by later runs that give none)")
    score.add_argument("--out-dir", default="bench/results", help="where the JSON, markdown and HTML go")
    score.set_defaults(func=_ops_score)
    test = ops.add_parser("test", help="every op's Triton kernel against its reference (exit 1 on failure)")
    test.add_argument("--ops", type=_comma_list(str), help="comma-separated op names (default: all)")
    test.add_argument("--rows", type=_comma_list(int), help="row counts (default: 1,5 on CPU, 1,256,4096 on CUDA)")
    test.add_argument("--dtypes", type=_comma_list(str), default=["fp32", "fp16", "bf16"],
                      help="comma-separated from fp32,fp16,bf16 (default: all three)")
    test.set_defaults(func=_ops_test)
    return ops


def _bench_ops(args: argparse.Namespace) -> int:
    from flagstack.bench import ops as bench_ops

    bench_ops.run(args)
    return 0


def _bench_engine(args: argparse.Namespace) -> int:
    from flagstack.bench import engine as bench_engine

    bench_engine.run(args)
    return 0


def add_bench_commands(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser("bench", help="benchmarks (JSON + markdown in bench/results/)")
    kinds = bench.add_subparsers(dest="bench_cmd", required=True)
    ops = kinds.add_parser("ops", help="ops vs torch eager, torch.compile, FlagGems, Liger and a device copy")
    ops.add_argument("--rows", type=_comma_list(int), help="row counts (default: 1,256,4096,32768 on CUDA)")
    ops.add_argument("--dtype", default="bf16", choices=["fp32", "fp16", "bf16"])
    ops.add_argument("--ops", type=_comma_list(str), help="comma-separated op names (default: the suite's)")
    ops.add_argument("--suite", default="llm", choices=["llm", "challenge", "attention", "all"])
    ops.add_argument("--quick", action="store_true", help="fewer rows, shorter timing")
    ops.add_argument("--fresh", action="store_true", help="re-time rows already in today's results file")
    ops.add_argument("--cuda-graph", action="store_true",
                     help="time CUDA-graph replays (GPU time, no launch overhead); results in ops-graph-*")
    ops.add_argument("--out-dir", default="bench/results", help="where the JSON and markdown go")
    ops.set_defaults(func=_bench_ops)
    engine = kinds.add_parser("engine", help="engine vs HF transformers: throughput, decode, memory, roofline")
    engine.add_argument("--device", choices=["cuda", "cpu"], help="default: cuda when available")
    engine.add_argument("--model", help="HF directory, .gguf file or bundled config name (default: qwen3-4b with "
                        "random weights on CUDA, the embedded SmolLM2 GGUF on CPU)")
    engine.add_argument("--num-requests", type=int, help="offline workload size (default: 256 on CUDA, 32 on CPU)")
    engine.add_argument("--quick", action="store_true", help="smaller workloads, no torch.compile anchor")
    engine.add_argument("--no-hf", action="store_true", help="skip the HF transformers anchors")
    engine.add_argument("--no-compile", action="store_true", help="skip the HF static cache + torch.compile anchor")
    engine.add_argument("--engine-arg", action="append", metavar="KEY=VALUE",
                        help="an EngineConfig field, e.g. max_num_seqs=128 (repeatable)")
    engine.add_argument("--threads", type=int, help="torch CPU threads (CPU runs)")
    engine.add_argument("--seed", type=int, default=0, help="seed of the request lengths and token ids")
    engine.add_argument("--note", help="a line for the results' meta (e.g. what else shared the machine)")
    engine.add_argument("--fresh", action="store_true", help="re-time rows already in today's results file")
    engine.add_argument("--out-dir", default="bench/results", help="where the JSON and markdown go")
    engine.set_defaults(func=_bench_engine)
    from flagstack.bench import serve as bench_serve  # argparse only at import

    serve = kinds.add_parser("serve", help="the OpenAI server under Poisson load, vs offline LLM.generate")
    bench_serve.add_arguments(serve)
    serve.set_defaults(func=lambda args: bench_serve.run(args) or 0)


def _demo(args: argparse.Namespace) -> int:
    """The op self-check and a quick op benchmark, on whatever device is here."""
    import torch

    _interpret_triton_without_cuda()
    print("== flagstack ops demo, step 1: every op's Triton kernel vs its PyTorch reference (flagstack ops test)")
    # One row count keeps it to a few minutes on 2 CPU cores (the interpreter is slow on 151,936-wide rows).
    rows = None if torch.cuda.is_available() else [2]
    status = _ops_test(argparse.Namespace(ops=None, rows=rows, dtypes=["fp32", "fp16", "bf16"]))
    from flagstack import ops

    known = {e.name for e in ops.all_ops()}
    bench_ops = [n for n in args.bench_ops if n in known] or ["rms_norm"]
    print(f"\n== step 2: a quick op benchmark (flagstack bench ops --quick --ops {','.join(bench_ops)})")
    _bench_ops(argparse.Namespace(rows=None, dtype="fp32", ops=bench_ops, suite="llm", quick=True,
                                  fresh=True, out_dir=args.out_dir))
    print(f"\n== demo done: op checks {'passed' if status == 0 else 'FAILED'}; results in {args.out_dir}/")
    return status


def add_demo_commands(sub: argparse._SubParsersAction, ops: argparse._SubParsersAction) -> None:
    """`flagstack demo` (what `make demo` runs: the annotation main job) and `flagstack ops demo`."""
    main_job = sub.add_parser("demo", help="what `make demo` runs: BBC News annotation on the embedded model")
    main_job.set_defaults(func=lambda args: main(["annotate", "demo"]))
    demo = ops.add_parser("demo", help="op checks and a quick op benchmark")
    demo.add_argument("--bench-ops", type=_comma_list(str), default=["rms_norm", "silu_and_mul", "softmax"],
                      help="ops the quick benchmark times (torch.compile on CPU takes seconds per op)")
    demo.add_argument("--out-dir", default="bench/results")
    demo.set_defaults(func=_demo)


def add_engine_commands(sub: argparse._SubParsersAction) -> None:
    """`generate` and `chat` (defined with the engine; argparse only at import)."""
    from flagstack.engine.commands import add_engine_commands as add

    add(sub)


def add_serve_command(sub: argparse._SubParsersAction) -> None:
    """`serve` (defined with the server; argparse only at import)."""
    from flagstack.engine.server.command import add_serve_command as add

    add(sub)


def add_annotate_commands(sub: argparse._SubParsersAction) -> None:
    """`annotate ...` (defined with the annotation layer)."""
    from flagstack.annotate.cli import add_annotate_commands as add

    add(sub)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flagstack", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    ops = add_ops_commands(sub)
    add_bench_commands(sub)
    add_demo_commands(sub, ops)
    add_engine_commands(sub)
    add_serve_command(sub)
    add_annotate_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run the chosen subcommand; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as err:  # bad input: a clear message, a non-zero exit
        print(f"flagstack: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
