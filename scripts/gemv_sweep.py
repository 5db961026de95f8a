"""Time the batch-1 GEMV's launch configs against cuBLAS on Qwen3-4B's four projections (H100):
`python3 scripts/gemv_sweep.py OUT.json`. Prints the best configs summed over the shapes."""
import json
import sys

from flagstack.ops.gemv import sweep

result = sweep()
configs = [name for name in result[0] if name not in ("n", "k", "mb")]
totals = {c: sum(r.get(c, float("inf")) for r in result) for c in configs}
for name, total in sorted(totals.items(), key=lambda kv: kv[1])[:12]:
    print(f"  sum over shapes {name}: {total:.1f} us")
json.dump(result, open(sys.argv[1], "w") if len(sys.argv) > 1 else sys.stdout, indent=1)
