"""The op registry's backend choice (Python override, FLAGSTACK_BACKEND, auto) and the shared argument checks."""
import os
import subprocess
import sys

import pytest
import torch

from flagstack.ops import registry, rms_norm, use_backend
from flagstack.ops.checks import check_same_device


def _backend_in_fresh_process(value: str) -> subprocess.CompletedProcess:
    code = "from flagstack.ops import registry; print(registry.get_backend())"
    env = {**os.environ, "FLAGSTACK_BACKEND": value}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


def test_environment_variable_picks_the_backend_and_rejects_unknown_names():
    assert _backend_in_fresh_process(" Reference ").stdout.strip() == "reference"
    bad = _backend_in_fresh_process("cuda")
    assert bad.returncode != 0 and "backend must be one of" in bad.stderr and "'cuda'" in bad.stderr


def test_python_override_wins_and_is_restored():
    before = registry.get_backend()
    with use_backend("reference"):
        assert registry.get_backend() == "reference"
        x = torch.randn(3, 8)
        assert registry.resolve_backend((x,), registry.get("rms_norm")) == "reference"
    assert registry.get_backend() == before
    with pytest.raises(ValueError, match="backend must be one of"):
        registry.set_backend("gpu")


def test_auto_runs_the_reference_on_cpu_tensors():
    x, w = torch.randn(2, 8), torch.randn(8)
    assert registry.resolve_backend((x, w, 1e-6), registry.get("rms_norm")) == "reference"
    want = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * w
    torch.testing.assert_close(rms_norm(x, w, 1e-6), want)


def test_same_device_check_names_every_tensor():
    check_same_device(x=torch.zeros(1), weight=torch.zeros(1), eps=1e-6)  # non-tensors are ignored
    with pytest.raises(ValueError, match=r"x on cpu, weight on meta"):
        check_same_device(x=torch.zeros(1), weight=torch.zeros(1, device="meta"))
