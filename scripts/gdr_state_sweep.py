"""Sweep the chunk_gated_delta_rule state kernel's config for bf16 at 128 dims on the GPU: each config in a
child process (an illegal address poisons the CUDA context), checked against the fp64 recurrence and timed."""
import json
import subprocess
import sys

CHILD = r"""
import json, sys, torch, triton
import flagstack.ops.challenge.chunk_gated_delta_rule
m = sys.modules['flagstack.ops.challenge.chunk_gated_delta_rule']  # the package attribute is the op
from tests.ops.challenge.test_chunk_gated_delta_rule import inputs, exact
cfg = json.loads(sys.argv[1]); dot = cfg.pop("dot")
m.dot_precision = lambda dtype, bk: dot
m.state_kernel_config = lambda bk, bv, d="ieee": dict(cfg)
torch.manual_seed(0)
args, s0 = inputs(2, 1000, 8, 16, 128, 128, dtype=torch.bfloat16, state=True)
out, state = m.chunk_gated_delta_rule_triton(*args, initial_state=s0, output_final_state=True,
                                             use_qk_l2norm_in_kernel=True)
torch.cuda.synchronize()
ref_out, ref_state = exact(args, s0, use_qk_l2norm_in_kernel=True)
err_o = (out.double() - ref_out).abs().max().item(); err_s = (state.double() - ref_state).abs().max().item()
case = m._bench_case(4096, torch.bfloat16, "cuda", cols=128)
us = triton.testing.do_bench(lambda: m.chunk_gated_delta_rule_triton(*case.args), rep=200) * 1e3
print(json.dumps({"err_out": err_o, "err_state": err_s, "us_4096x128": us}))
"""

configs = [{"BV": bv, "num_warps": w, "num_stages": s, "dot": d}
           for d in ("tf32x3", "ieee") for bv in (16, 32) for w in (4, 8) for s in (1, 2)]
rows = []
for cfg in configs:
    run = subprocess.run([sys.executable, "-c", CHILD, json.dumps(cfg)], capture_output=True, text=True, timeout=120)
    res = json.loads(run.stdout.strip().splitlines()[-1]) if run.returncode == 0 else \
        {"error": (run.stderr.strip().splitlines() or ["?"])[-1][:120]}
    rows.append({**cfg, **res})
    print(json.dumps(rows[-1]), flush=True)
if len(sys.argv) > 1:
    json.dump(rows, open(sys.argv[1], "w"), indent=1)
