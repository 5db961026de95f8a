"""`flagstack ops test`: every op's Triton implementation against its PyTorch reference.

Inputs come from each op's `bench_case` (small rows on CPU, where the kernels run through
TRITON_INTERPRET=1; real rows on a GPU). Each implementation gets its own clone of the inputs,
since some ops write into them (add_rms_norm updates the residual), and both the outputs and
the inputs after the call are compared: float tensors with the challenge's tolerance for the
input dtype, integer and bool tensors exactly, other values with ==.
"""
from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch

from flagstack.ops.registry import OpEntry

# The challenge's per-dtype resolutions, used as FlagGems' gems_assert_close does: the relative
# tolerance, with an absolute tolerance of ATOL (times the reduced length where a result sums
# many terms). One bf16 ulp is 2^-8 relative, well inside 0.016. tests/ops/helpers.py imports these.
RESOLUTION = {torch.float16: 1e-3, torch.bfloat16: 0.016, torch.float32: 1.3e-6}
ATOL = 1e-4
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
CPU_ROWS = (1, 5)
GPU_ROWS = (1, 256, 4096)


@dataclass
class CheckResult:
    op: str
    rows: int
    dtype: str
    status: str  # "pass", "FAIL" (values differ), "error" (an exception), "skip"
    detail: str = ""
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status in ("pass", "skip")


def clone_inputs(value: Any) -> Any:
    """A copy of `value` with every tensor (same strides) and torch.Generator (same state) cloned,
    through tuples, lists and dicts: both implementations then start from identical inputs."""
    if isinstance(value, torch.Tensor):
        out = torch.empty_strided(value.shape, value.stride(), dtype=value.dtype, device=value.device)
        return out.copy_(value)
    if isinstance(value, torch.Generator):
        twin = torch.Generator(value.device)
        twin.set_state(value.get_state())
        return twin
    if isinstance(value, (tuple, list)):
        return type(value)(clone_inputs(v) for v in value)
    if isinstance(value, dict):
        return {k: clone_inputs(v) for k, v in value.items()}
    return value


def compare(out: Any, ref: Any, dtype: torch.dtype, where: str = "output") -> str | None:
    """None if `out` matches `ref` (per-dtype tolerance for floats, exact otherwise), else why not."""
    if isinstance(ref, (tuple, list)):
        if not isinstance(out, (tuple, list)) or len(out) != len(ref):
            return f"{where}: expected a sequence of {len(ref)}, got {type(out).__name__}"
        for i, (o, r) in enumerate(zip(out, ref)):
            if (why := compare(o, r, dtype, f"{where}[{i}]")) is not None:
                return why
        return None
    if isinstance(ref, dict):
        if not isinstance(out, dict) or out.keys() != ref.keys():
            return f"{where}: expected a dict with keys {sorted(ref)}, got {type(out).__name__}"
        for k in ref:
            if (why := compare(out[k], ref[k], dtype, f"{where}[{k!r}]")) is not None:
                return why
        return None
    if isinstance(ref, torch.Generator):  # both implementations must consume the same randomness
        same = isinstance(out, torch.Generator) and torch.equal(out.get_state(), ref.get_state())
        return None if same else f"{where}: generator state differs from the reference's"
    if not isinstance(ref, torch.Tensor):
        return None if out == ref else f"{where}: {out!r} != {ref!r}"
    if not isinstance(out, torch.Tensor):
        return f"{where}: expected a tensor, got {type(out).__name__}"
    if out.shape != ref.shape or out.dtype != ref.dtype:
        return f"{where}: {out.dtype} {tuple(out.shape)} != reference {ref.dtype} {tuple(ref.shape)}"
    exact = not (ref.is_floating_point() or ref.is_complex())
    try:
        torch.testing.assert_close(out, ref, rtol=0 if exact else RESOLUTION.get(dtype, 0.0),
                                   atol=0 if exact else ATOL, equal_nan=True)
    except AssertionError as err:
        lines = [s.strip() for s in str(err).splitlines() if "ismatched" in s or "difference" in s]
        return f"{where}: " + "; ".join(lines[:3])
    return None


def check_case(entry: OpEntry, rows: int, dtype: torch.dtype, device: str, seed: int = 0) -> CheckResult:
    """Run one op's Triton impl and reference on its bench_case(rows, dtype, device) and compare.

    A bench_case that raises ValueError has no case for these rows/dtype: reported as skipped.
    """
    name = str(dtype).replace("torch.", "")
    start = time.perf_counter()
    torch.manual_seed(seed)
    try:
        case = entry.bench_case(rows, dtype, device)
    except ValueError as err:  # the op has no case for this dtype/rows
        return CheckResult(entry.name, rows, name, "skip", f"bench_case: {err}")
    except Exception as err:  # noqa: BLE001 -- e.g. out of memory: reported, the other checks go on
        why = f"bench_case: {type(err).__name__}: {err}".splitlines()[0]
        return CheckResult(entry.name, rows, name, "error", why)
    try:
        if entry.validate is not None:
            entry.validate(*case.args, **case.kwargs)
        results = {}
        for impl_name, impl in (("reference", entry.reference), ("triton", entry.triton)):
            args, kwargs = clone_inputs(case.args), clone_inputs(case.kwargs)
            torch.manual_seed(seed)  # sampling ops draw the same random numbers in both
            with warnings.catch_warnings():  # the interpreter's numpy warns on overflow to inf, as it should
                warnings.simplefilter("ignore", RuntimeWarning)
                results[impl_name] = (impl(*args, **kwargs), args, kwargs)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
    except Exception as err:  # noqa: BLE001 -- any crash of an implementation is a failed check
        return CheckResult(entry.name, rows, name, "error", f"{type(err).__name__}: {err}".splitlines()[0],
                           time.perf_counter() - start)
    (out, args, kwargs), (ref, ref_args, ref_kwargs) = results["triton"], results["reference"]
    why = (compare(out, ref, dtype) or compare(args, ref_args, dtype, "inputs after the call")
           or compare(kwargs, ref_kwargs, dtype, "keyword inputs after the call"))
    return CheckResult(entry.name, rows, name, "FAIL" if why else "pass", why or "",
                       time.perf_counter() - start)


def run_selftest(entries: Iterable[OpEntry], rows: Iterable[int] | None = None,
                 dtypes: Iterable[torch.dtype] = DTYPES, device: str | None = None,
                 on_result: Callable[[CheckResult], None] | None = None) -> list[CheckResult]:
    """Check every (op, rows, dtype); rows default to small counts on CPU and real ones on CUDA.

    `on_result` is called with each result as it is known (the CLI prints it).
    """
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError("device 'cpu' needs TRITON_INTERPRET=1 set before flagstack.ops is imported")
    rows = tuple(rows) if rows is not None else CPU_ROWS if device == "cpu" else GPU_ROWS
    results = []
    for entry in entries:
        if entry.triton is None or entry.bench_case is None:  # one line for the op, not one per case
            missing = "Triton implementation" if entry.triton is None else "bench_case"
            todo = [lambda: CheckResult(entry.name, 0, "-", "skip", f"no {missing}")]
        else:
            todo = [lambda r=r, d=d: check_case(entry, r, d, device) for r in rows for d in dtypes]
        for check in todo:
            results.append(check())
            if on_result is not None:
                on_result(results[-1])
    return results


HEADER = f"{'op':22s} {'rows':>6s} {'dtype':9s} {'status':6s} {'seconds':>8s}  detail"


def format_result(r: CheckResult) -> str:
    """One line of the pass/fail table (columns as in HEADER)."""
    return f"{r.op:22s} {r.rows:6d} {r.dtype:9s} {r.status:6s} {r.seconds:8.2f}  {r.detail}"


def summary(results: list[CheckResult]) -> str:
    """'N pass, N FAIL, N error, N skip'."""
    counts = {s: sum(r.status == s for r in results) for s in ("pass", "FAIL", "error", "skip")}
    return ", ".join(f"{n} {s}" for s, n in counts.items())
