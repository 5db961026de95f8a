"""ATen override: enable()/use_aten() route torch's own ops to our kernels, fall back where they must,
and disable() restores ATen. On CPU the kernels are installed for the CPU key (Triton interpreter)."""
import importlib

import pytest
import torch
import torch.nn.functional as F

from flagstack.ops import disable, enable, is_enabled, use_aten
from tests.ops.helpers import DEVICE, ON_GPU, gpu_only

MINE = ["aten::_log_softmax", "aten::_softmax", "aten::argmax"]
KEY = "CUDA" if ON_GPU else "CPU"
# by module path: flagstack.ops.softmax / .argmax as attributes are the op functions
softmax_module = importlib.import_module("flagstack.ops.softmax")
argmax_module = importlib.import_module("flagstack.ops.argmax")


@pytest.fixture
def calls(monkeypatch):
    """Names of our kernels as the adapters call them."""
    seen = []
    real_softmax, real_argmax = softmax_module._softmax_triton, argmax_module.argmax_triton

    def spy_softmax(*args):
        seen.append("log_softmax" if args[-1] else "softmax")
        return real_softmax(*args)

    def spy_argmax(*args):
        seen.append("argmax")
        return real_argmax(*args)

    monkeypatch.setattr(softmax_module, "_softmax_triton", spy_softmax)
    monkeypatch.setattr(argmax_module, "argmax_triton", spy_argmax)
    return seen


def _tiny_qwen3():
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    config = Qwen3Config(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=128,
                         attn_implementation="eager")  # eager attention calls aten::_softmax
    return Qwen3ForCausalLM(config).to(DEVICE).eval()


def test_enable_routes_our_kernels_and_disable_restores(calls):
    x = torch.randn(3, 40, device=DEVICE)
    expected = (torch.softmax(x, -1), torch.log_softmax(x, 0), torch.argmax(x, 1), torch.argmax(x))
    with use_aten(KEY, only=MINE) as names:
        assert is_enabled() and names == MINE
        got = (F.softmax(x, -1), F.log_softmax(x, 0), torch.argmax(x, 1), x.argmax())
        assert calls == ["softmax", "log_softmax", "argmax", "argmax"]
        with use_aten(KEY, only=MINE):  # nested: still on afterwards
            pass
        assert is_enabled()
    assert not is_enabled()
    for out, ref in zip(got, expected):
        torch.testing.assert_close(out, ref, rtol=1.3e-6, atol=1e-6)
    F.softmax(x, -1), torch.argmax(x, 1)
    assert len(calls) == 4, "after disable() ATen's own kernels run"


def test_unsupported_cases_fall_back_to_aten(calls):
    x = torch.randn(3, 40, device=DEVICE, dtype=torch.float64)
    ints = torch.randint(0, 5, (3, 40), device=DEVICE)
    with use_aten(KEY, only=MINE):
        torch.testing.assert_close(F.softmax(x, -1), torch.exp(x) / torch.exp(x).sum(-1, keepdim=True))
        assert torch.equal(torch.argmax(ints, 1), torch.max(ints, 1).indices)
        with pytest.raises((IndexError, RuntimeError), match="argmax"):
            torch.argmax(torch.empty(3, 0, device=DEVICE), 1)
    assert calls == []


def test_enable_disable_functions_and_errors():
    with pytest.raises(ValueError, match="without a flagstack override"):
        enable(KEY, only=["aten::no_such_op"])
    assert not is_enabled()
    assert enable(KEY, only=MINE) == MINE
    assert enable(KEY) == MINE, "enabling again changes nothing"
    disable()
    disable()
    assert not is_enabled()


def test_hf_model_logits_with_our_softmax(calls):
    """A tiny HF Qwen3 (eager attention): the same logits with our softmax, which really runs."""
    model = _tiny_qwen3()
    ids = torch.randint(0, 512, (2, 12), device=DEVICE)
    with torch.no_grad():
        expected = model(ids).logits
        with use_aten(KEY, only=MINE):
            got = model(ids).logits
    assert calls.count("softmax") == 2  # one per layer
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


@gpu_only
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_hf_model_logits_with_every_override(dtype):
    """Every registered override (rms_norm, silu, embedding, softmax, ...) on CUDA: logits agree."""
    model = _tiny_qwen3().to(dtype)
    ids = torch.randint(0, 512, (4, 64), device=DEVICE)
    with torch.no_grad():
        expected = model(ids).logits.float()
        with use_aten() as names:
            got = model(ids).logits.float()
    assert {"aten::_softmax", "aten::rms_norm", "aten::silu", "aten::embedding"} <= set(names)
    tol = 1e-4 if dtype == torch.float32 else 0.05
    torch.testing.assert_close(got, expected, rtol=tol, atol=tol)
    assert (got.argmax(-1) == expected.argmax(-1)).float().mean() > 0.98
