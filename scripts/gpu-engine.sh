#!/usr/bin/env bash
# On the GPU machine, in one call (< 9 minutes): the engine tests with CUDA, then `bench engine`
# (Qwen3-4B config, bf16, random weights, vs HF transformers in the same process). Logs and results go to $OUT.
# Usage: bash scripts/gpu-engine.sh [BENCH ARGS...]   e.g. --quick, --num-requests 128, --no-compile
source scripts/gpu-env.sh
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
start=$SECONDS
timeout 150 python3 -m pytest -q -p no:cacheprovider --timeout=120 tests/engine > "$OUT/pytest-engine.log" 2>&1
echo "pytest tests/engine rc=$? ($((SECONDS - start)) s)"
grep -E "passed|failed|error" "$OUT/pytest-engine.log" | tail -2
grep -E "^FAILED|^ERROR" "$OUT/pytest-engine.log" | head -20
# the bench writes its JSON + markdown row by row, so a timeout keeps every finished row
left=$((520 - (SECONDS - start)))
timeout "$left" python3 -m flagstack.cli bench engine --out-dir "$OUT" "$@" > "$OUT/bench-engine.log" 2>&1
echo "bench engine rc=$? ($((SECONDS - start)) s, limit ${left} s)"
grep -E "failed|Error" "$OUT/bench-engine.log" | head -10
cat "$OUT"/engine*.md  # meta (targets met or missed), then every row
