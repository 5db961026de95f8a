"""GPU only: the FlagGems and Liger adapters of bench/ops.py compute the same op as our reference
(a wrong argument mapping would make the benchmark compare different work)."""
import importlib.util
import inspect

import pytest
import torch

from flagstack import ops
from flagstack.bench.ops import FLAGGEMS, LIGER
from flagstack.ops.selftest import clone_inputs
from tests.ops.helpers import gpu_only

CASES = ([("flaggems", "flag_gems", name) for name in FLAGGEMS]
         + [("liger", "liger_kernel", name) for name in LIGER])


def _first_tensor(value):
    return value if isinstance(value, torch.Tensor) else next(v for v in value if isinstance(v, torch.Tensor))


@gpu_only
@pytest.mark.parametrize("library, module, name", CASES)
def test_adapter_matches_reference(library, module, name):
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} not installed")
    if name not in {e.name for e in ops.all_ops()}:
        pytest.skip(f"op {name} not registered")
    entry = ops.get(name)
    torch.manual_seed(0)
    case = entry.bench_case(7, torch.float32, "cuda")
    inputs = clone_inputs(case.args)  # first: a kwarg may alias an input (add_rms_norm's out=x) and be written
    ref_args = clone_inputs(inputs)
    ref = entry.reference(*ref_args, **case.kwargs)
    bound = inspect.signature(entry.reference).bind(*clone_inputs(inputs), **case.kwargs)
    bound.apply_defaults()
    timed = (FLAGGEMS if library == "flaggems" else LIGER)[name](dict(bound.arguments))
    if timed is None:
        pytest.skip("the library does not cover this case")
    out = timed()
    if name == "rotary_embedding":  # both libraries rotate q in place; compare q itself
        got, want = bound.arguments["q"], ref_args[1]
    else:
        want = _first_tensor(ref)
        got = _first_tensor(out).reshape(want.shape)
    torch.testing.assert_close(got.to(want.dtype), want, rtol=1e-3, atol=1e-3)
