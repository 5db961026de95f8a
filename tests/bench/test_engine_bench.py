"""bench/engine.py: the seeded request generator, the roofline arithmetic on hand-computed numbers (and
the weight bytes against HF's own parameter count), the targets, and a tiny end-to-end run on CPU
(engine vs HF on a tiny random Llama) that writes, resumes and notes a failing anchor."""
import argparse
import json
from dataclasses import replace

import pytest
import torch
from transformers import LlamaConfig

from flagstack import cli
from flagstack.bench import engine as bench_engine
from flagstack.bench.engine_roofline import DeviceCeiling, ModelCost, SeqStep, decode_steps, padded_batch_steps
from tests.engine.model_helpers import tiny_hf_model


def test_requests_are_seeded_and_in_range():
    make = lambda seed: bench_engine.sample_requests(300, (3, 5), (1, 2), vocab_size=11, seed=seed)  # noqa: E731
    first, again, other = make(0), make(0), make(1)
    assert first == again and first != other
    assert {len(r.prompt) for r in first} == {3, 4, 5}  # both ends of the inclusive range are drawn
    assert {r.output_len for r in first} == {1, 2}
    ids = [t for r in first for t in r.prompt]
    assert min(ids) == 0 and max(ids) == 10
    assert bench_engine.random_prompts(2, 7, 5, seed=3) == bench_engine.random_prompts(2, 7, 5, seed=3)
    for kwargs, message in [(dict(num_requests=0), "num_requests"), (dict(input_range=(0, 4)), "input_range"),
                            (dict(output_range=(5, 4)), "output_range"), (dict(vocab_size=0), "vocab_size")]:
        args = {**dict(num_requests=2, input_range=(1, 4), output_range=(1, 4), vocab_size=8, seed=0), **kwargs}
        with pytest.raises(ValueError, match=message):
            bench_engine.sample_requests(**args)


def test_default_plans():
    gpu = bench_engine.default_plan("cuda")
    assert (gpu.num_requests, gpu.input_range, gpu.output_range) == (256, (100, 1024), (100, 1024))
    assert (gpu.decode_input, gpu.decode_output, gpu.decode_batches) == (128, 256, (1,))
    cpu = bench_engine.default_plan("cpu", num_requests=4)
    assert cpu.prefill_lens == (512, 2048) and cpu.decode_batches == (1, 8) and cpu.batch_size == 4
    with pytest.raises(ValueError, match="num_requests"):
        bench_engine.default_plan("cpu", num_requests=0)


def test_cases_cheapest_first_with_distinct_prompts():
    plan = bench_engine.Plan(num_requests=4, input_range=(5, 9), output_range=(2, 6), offline=True, batch_size=3,
                             batch_output=None, prefill_lens=(7,), decode_input=4, decode_output=5,
                             decode_batches=(1, 2), hf_compile=True)
    requests = bench_engine.sample_requests(4, (5, 9), (2, 6), vocab_size=1000, seed=0)
    cases = bench_engine.build_cases(plan, requests, vocab_size=1000, seed=0)
    assert [c.name for c in cases] == ["decode b1 4+5", "decode b2 4+5", "prefill 7", "batch 3 req, in 5-9, out 2-6",
                                       "offline 4 req, in 5-9, out 2-6"]
    decode1, decode2, prefill, batch, offline = cases
    assert decode1.anchors == (bench_engine.HF_EAGER, bench_engine.HF_COMPILE)  # compile on batch 1 only
    assert decode2.anchors == prefill.anchors == batch.anchors == (bench_engine.HF_EAGER,) and offline.anchors == ()
    assert [len(r.prompt) for r in batch.requests] == [len(r.prompt) for r in requests[:3]]
    assert [r.output_len for r in batch.requests] == [r.output_len for r in requests[:3]]
    prompts = [tuple(r.prompt) for c in cases for r in c.requests if c is not offline] + list(decode2.baseline)
    assert len(set(prompts)) == len(prompts) and not set(prompts) & {tuple(r.prompt) for r in requests}
    assert (decode2.rated_tokens, prefill.rated_tokens, batch.rated_tokens) == (2 * 4, 7, batch.output_tokens)
    no_hf = bench_engine.build_cases(replace(plan, hf=False), requests, vocab_size=1000, seed=0)
    assert all(c.anchors == () for c in no_hf)


def tiny_cost_config() -> LlamaConfig:
    return LlamaConfig(hidden_size=4, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=2,
                       intermediate_size=8, vocab_size=10)


def test_roofline_on_hand_computed_numbers():
    cost = ModelCost.from_config(tiny_cost_config(), dtype_bytes=2)
    # per layer: q 4x4 + k,v 4x2 each + o 4x4 + gate/up/down 3x4x8 = 16+16+16+96 = 144, norms 2x4 = 8;
    # two layers 304, final norm 4, output matrix 10x4 = 40: 348 weights, 696 bytes
    assert cost.weight_bytes == 696
    assert cost.kv_bytes_per_token == 2 * 2 * 2 * 2  # K and V x 2 layers x 1 kv head x head_dim 2 x 2 bytes
    fp8 = ModelCost.from_config(tiny_cost_config(), dtype_bytes=2, kv_dtype_bytes=1)
    assert (fp8.weight_bytes, fp8.kv_bytes_per_token) == (696, 8)  # an fp8 cache: 1 byte a K/V value
    assert (cost.layer_params, cost.vocab_hidden, cost.attn_flops_per_pair) == (288, 40, 32)
    step = [SeqStep(3, 2), SeqStep(5, 1), SeqStep(0, 4, sampled=False)]
    assert cost.step_bytes(step) == 696 + 16 * (5 + 6 + 4)  # 936
    # 7 tokens x 2 x 288 + 2 sampled x 2 x 40 + (2x3+3 + 5+1 + 0+10 = 25 pairs) x 32
    assert cost.step_flops(step) == 4032 + 160 + 800
    ceiling = DeviceCeiling(bytes_per_s=100.0, flops_per_s=1000.0)
    assert ceiling.step_floor_s(cost, step) == pytest.approx(9.36)  # memory-bound: 936 B at 100 B/s
    assert DeviceCeiling(1e6, 1000.0).step_floor_s(cost, step) == pytest.approx(4.992)  # compute-bound
    assert ceiling.floor_s(cost, [step, step]) == pytest.approx(18.72)


def test_cpu_ceiling_takes_the_faster_gemm(monkeypatch):
    """On CPU the GEMM ceiling is the faster of a @ b and the engine's linear (each run once here, with
    made-up timings: 2 ms and 1 ms for the 1024^3 product, 1 ms for the 256 MiB copy)."""
    timings = iter([2000.0, 1000.0])
    calls = []

    def fake_time_us(fn, device):
        calls.append(fn().shape)
        return next(timings)
    monkeypatch.setattr(bench_engine, "time_us", fake_time_us)
    monkeypatch.setattr(bench_engine, "copy_time_us", lambda nbytes, device: 1000.0)
    ceiling = bench_engine.measure_ceiling("cpu")
    assert calls == [(1024, 1024), (1024, 1024)]
    assert ceiling.flops_per_s == pytest.approx(2 * 1024 ** 3 / 1e-3)
    assert ceiling.bytes_per_s == pytest.approx((1 << 28) / 1e-3)


def test_padded_and_decode_steps():
    assert padded_batch_steps([3, 5], 3) == [[SeqStep(0, 5)] * 2, [SeqStep(5, 1)] * 2, [SeqStep(6, 1)] * 2]
    assert decode_steps(2, 4, 3) == [[SeqStep(4, 1)] * 2, [SeqStep(5, 1)] * 2]
    assert decode_steps(1, 4, 1) == []
    with pytest.raises(ValueError, match="input_lens"):
        padded_batch_steps([], 2)


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_weight_bytes_match_hf_parameters(arch):
    hf = tiny_hf_model(arch)  # llama: biases, untied head; qwen3: q/k norms, tied head
    params = sum(p.numel() for p in hf.parameters())  # a tied matrix counted once
    embedding = hf.model.embed_tokens.weight.numel()
    read = params - (0 if hf.config.tie_word_embeddings else embedding)  # an untied embedding is only gathered
    assert ModelCost.from_config(hf.config, dtype_bytes=4).weight_bytes == 4 * read


def test_targets_lines():
    def row(case, impl, kind, rate, batch=1, roof=None):
        return {"case": case, "impl": impl, "kind": kind, "tok/s": rate, "batch": batch, "%roofline": roof}
    hf = bench_engine.HF_EAGER
    rows = [row("prefill 512", "flagstack", "prefill", 600.0), row("prefill 512", hf, "prefill", 560.0),
            row("batch 32", "flagstack", "batch", 300.0, 32), row("batch 32", hf, "batch", 200.0, 32)]
    lines = bench_engine.targets(rows, "cpu")
    assert lines == ["met    prefill 512: flagstack 1.07x HF (need >= 1x)",
                     "MISSED batch 32: flagstack 1.50x HF (need >= 3x)"]
    gpu = [row("decode b1 128+256", "flagstack", "decode", 330.0),
           row("offline 256", "flagstack", "batch", 9e3, 256, 75.0)]
    assert [line.split()[0] for line in bench_engine.targets(gpu, "cuda")] == ["met", "MISSED", "met"]


def test_engine_args_and_cli_errors(capsys):
    assert bench_engine.parse_engine_args(["max_num_seqs=8", "dtype=float32", "enforce_eager=true"]) == \
        {"max_num_seqs": 8, "dtype": "float32", "enforce_eager": True}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        bench_engine.parse_engine_args(["max_num_seqs"])
    assert cli.main(["bench", "engine", "--device", "cpu", "--engine-arg", "nope=1"]) == 2
    assert "EngineConfig field" in capsys.readouterr().err


TINY_PLAN = bench_engine.Plan(num_requests=3, input_range=(4, 12), output_range=(2, 3), offline=True, batch_size=2,
                              batch_output=None, prefill_lens=(16,), decode_input=6, decode_output=8,
                              decode_batches=(1,), hf_compile=True)
CEILING = DeviceCeiling(bytes_per_s=1e9, flops_per_s=float("inf"))  # memory floor only: easy to check by hand


def _args(path, out_dir, **over):
    base = dict(device="cpu", model=str(path), quick=False, num_requests=None, no_hf=False, no_compile=False,
                engine_arg=["block_size=4", "max_num_batched_tokens=64"], threads=None, seed=0, note="tiny test",
                fresh=False, out_dir=str(out_dir))
    return argparse.Namespace(**{**base, **over})


def test_tiny_end_to_end(tmp_path, monkeypatch):
    hf = tiny_hf_model("llama")
    hf.save_pretrained(tmp_path / "model")
    monkeypatch.setattr(bench_engine, "measure_ceiling", lambda device: CEILING)
    real_measure_hf = bench_engine.measure_hf

    def compile_fails(model, case, impl, *rest):
        if impl == bench_engine.HF_COMPILE:
            raise RuntimeError("no compiler here")
        return real_measure_hf(model, case, impl, *rest)
    monkeypatch.setattr(bench_engine, "measure_hf", compile_fails)
    rows = bench_engine.run(_args(tmp_path / "model", tmp_path / "out"), TINY_PLAN)

    by = {(r["case"], r["impl"]): r for r in rows}
    offline, batch, prefill, decode = ("offline 3 req, in 4-12, out 2-3", "batch 2 req, in 4-12, out 2-3",
                                       "prefill 16", "decode b1 6+8")
    eager, compiled = bench_engine.HF_EAGER, bench_engine.HF_COMPILE
    assert set(by) == {(offline, "flagstack"), (batch, "flagstack"), (batch, eager), (prefill, "flagstack"),
                       (prefill, eager), (decode, "flagstack"), (decode, eager), (decode, compiled)}
    requests = bench_engine.sample_requests(3, (4, 12), (2, 3), hf.config.vocab_size, seed=0)
    assert by[(offline, "flagstack")]["output"] == sum(r.output_len for r in requests)
    assert by[(offline, "flagstack")]["input"] == sum(len(r.prompt) for r in requests)
    for key, row in by.items():
        assert row["weights"] == "checkpoint"
        if key[1] == compiled:
            assert row["tok/s"] is None and row["notes"] == "failed: RuntimeError: no compiler here"
            continue
        assert row["seconds"] > 0 and row["tok/s"] > 0 and 0 < row["%roofline"]
        if key[1] == eager:
            assert row["flagstack x"] == pytest.approx(by[(key[0], "flagstack")]["tok/s"] / row["tok/s"])
    # prefill of 16 tokens in one step (budget 64): weights once plus 16 tokens of KV, at 1e9 B/s
    embedding = hf.model.embed_tokens.weight.numel()
    weight_bytes = 4 * (sum(p.numel() for p in hf.parameters()) - embedding)
    kv_per_token = 4 * 2 * hf.config.num_hidden_layers * hf.config.num_key_value_heads * 16  # head_dim 64/4
    floor_ms = (weight_bytes + 16 * kv_per_token) / 1e9 * 1e3
    for impl in ("flagstack", eager):
        assert by[(prefill, impl)]["floor ms"] == pytest.approx(floor_ms)
        assert by[(prefill, impl)]["tok/s"] == pytest.approx(16 / by[(prefill, impl)]["seconds"])
    assert by[(decode, "flagstack")]["tok/s"] == pytest.approx(7 / by[(decode, "flagstack")]["seconds"])
    assert by[(batch, eager)]["total tok/s"] > 0
    for case in (offline, batch):  # warm-up, batch and offline prompts are distinct: no prefix cache hits
        assert "0 preemptions, 0 prompt tokens cached" in by[(case, "flagstack")]["notes"]

    (json_path,) = (tmp_path / "out").glob("engine-cpu-*.json")
    body = json.loads(json_path.read_text())
    assert body["meta"]["mode"] == "CPU" and body["meta"]["note"] == "tiny test"
    assert body["meta"]["engine_args"] == {"block_size": 4, "max_num_batched_tokens": 64}
    assert len(body["rows"]) == 8
    markdown = json_path.with_suffix(".md").read_text()
    assert "| case | impl |" in markdown and "prefill 16" in markdown and "no compiler here" in markdown

    def must_not_run(*a, **k):
        raise AssertionError("a stored row was measured again")
    monkeypatch.setattr(bench_engine, "measure_engine", must_not_run)
    monkeypatch.setattr(bench_engine, "measure_hf", must_not_run)
    resumed = bench_engine.run(_args(tmp_path / "model", tmp_path / "out", no_compile=True), TINY_PLAN)
    assert {(r["case"], r["impl"]) for r in resumed} == set(by)
