"""flagstack/ops/selftest.py: the comparison rules (tolerance per dtype, exact integers, tuples,
inputs written in place) and the per-case runner, on hand-made values."""
import torch

from flagstack.ops.registry import BenchCase, OpEntry
from flagstack.ops.selftest import check_case, clone_inputs, compare, run_selftest
from tests.ops.helpers import DEVICE


def test_float_tolerance_follows_dtype():
    ref = torch.tensor([1.0, 2.0])
    assert compare(ref * (1 + 5e-3), ref, torch.bfloat16) is None  # inside bf16's 0.016
    assert "output" in compare(ref * (1 + 5e-3), ref, torch.float16)  # outside fp16's 1e-3
    assert compare(torch.tensor([float("nan")]), torch.tensor([float("nan")]), torch.float32) is None


def test_integers_exact_and_structure():
    ids = torch.tensor([3, 4])
    assert compare(ids, ids.clone(), torch.float32) is None
    assert compare(ids + 1, ids, torch.bfloat16) is not None  # no tolerance for integer outputs
    why = compare((ids, torch.ones(2)), (ids, torch.zeros(2)), torch.float32)
    assert why.startswith("output[1]")
    assert "sequence of 2" in compare(ids, (ids, ids), torch.float32)
    assert "torch.int32 (2,) != reference torch.int64 (2,)" in compare(ids.int(), ids, torch.float32)
    assert compare(3, 3, torch.float32) is None and compare(3, 4, torch.float32) == "output: 3 != 4"
    gen, twin = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    assert compare(gen, twin, torch.float32) is None
    torch.rand(1, generator=gen)
    assert "generator state differs" in compare(gen, twin, torch.float32)


def test_clone_inputs_keeps_strides_and_copies():
    t = torch.randn(4, 6).t()
    cloned = clone_inputs({"a": (t, 2)})
    assert cloned["a"][1] == 2 and cloned["a"][0].stride() == t.stride()
    cloned["a"][0].zero_()
    assert t.abs().sum() > 0
    gen = torch.Generator().manual_seed(5)
    twin = clone_inputs([gen])[0]
    assert twin is not gen and torch.equal(torch.rand(4, generator=gen), torch.rand(4, generator=twin))


def _entry(triton_fn, name="scale"):
    def reference(x, out):
        """x * 2, also written into out."""
        out.copy_(x * 2)
        return x * 2

    def bench_case(rows, dtype, device):
        if dtype == torch.float16:
            raise ValueError("no fp16 case")
        return BenchCase((torch.randn(rows, 3, dtype=dtype, device=device), torch.zeros(rows, 3, dtype=dtype)))
    return OpEntry(name, reference, triton=triton_fn, bench_case=bench_case)


def test_check_case_compares_inputs_written_in_place():
    good = _entry(lambda x, out: (out.copy_(x * 2), x * 2)[1])
    forgot_out = _entry(lambda x, out: x * 2)
    assert check_case(good, 2, torch.float32, "cpu").status == "pass"
    result = check_case(forgot_out, 2, torch.float32, "cpu")
    assert result.status == "FAIL" and result.detail.startswith("inputs after the call[1]")
    assert check_case(good, 2, torch.float16, "cpu").status == "skip"  # bench_case had no such case


def test_run_selftest_one_skip_line_for_ops_without_triton():
    results = run_selftest([_entry(None)], rows=[1, 2], dtypes=[torch.float32], device=DEVICE)
    assert [(r.status, r.detail) for r in results] == [("skip", "no Triton implementation")]


def test_bench_case_crash_is_an_error_and_results_stream():
    entry = _entry(lambda x, out: x)
    entry.bench_case = lambda rows, dtype, device: torch.empty(-1)  # RuntimeError, not ValueError
    seen = []
    results = run_selftest([entry], rows=[1, 2], dtypes=[torch.float32], device=DEVICE, on_result=seen.append)
    assert seen == results and [r.status for r in results] == ["error", "error"]
    assert results[0].detail.startswith("bench_case: RuntimeError")
