#!/usr/bin/env bash
# On the GPU machine: ops tests on real shapes, then the op benchmarks. Logs and results go to $OUT.
# Usage: bash scripts/gpu-ops.sh [SUITES...]   (default: llm challenge attention)
source scripts/gpu-env.sh
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
python3 -m pytest -q -p no:cacheprovider --timeout=300 tests/ops > "$OUT/pytest-ops.log" 2>&1 ; echo "pytest rc=$?"
grep -E "passed|failed|error" "$OUT/pytest-ops.log" | tail -3
grep -E "^FAILED|^ERROR" "$OUT/pytest-ops.log" | head -20
for suite in ${@:-llm challenge attention}; do
  python3 -m flagstack.cli bench ops --suite "$suite" --out-dir "$OUT" > "$OUT/bench-$suite.log" 2>&1; echo "bench $suite rc=$?"
  tail -5 "$OUT/bench-$suite.log"
done
