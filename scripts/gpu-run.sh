#!/usr/bin/env bash
# One GPU call, several stages: `bash scripts/gpu-run.sh STAGE[:SECONDS] ...`. Each stage runs under its
# own time limit; logs and result files are packed into $OUT/results.tgz (the device tool returns at most
# 8 files), with a short summary printed last.
# Stages: ops-tests challenge-tests challenge-new engine-tests attention attn-sweep annotate serve engine
# engine-nohf ops-llm ops-1 ops-challenge score score-speed profile gemv-sweep gdr-sweep decode-short kv-layout decode-gap b1-pdl new-tests ops-256 challenge-profile conv-probe ctc-probe conv-ctc-tests host-vs-gpu ops-graph grid-tests
# rotary-probe gemv-probe bench-tests conv-score ops-graph-short host-profile profile-b1 alloc-probe l2-prefetch gemv-bulk embedding-probe
# decode-tma: scripts/decode_tma_probe.py (per-page TMA loads against the default decode and SDPA)
# engine-fp8: engine-nohf with an fp8 KV cache, into fp8/; fp8-tests: the attention, engine-model and engine-bench tests
# launch-cache-tests: the tests of every wrapper that launches by key (ops/launch_cache.py), over 14 processes
# score-part: `ops score` with tests on the ops in $SCORE_OPS (default all; $SCORE_FLAGS added, $SCORE_NOTE as --note),
# into bench/results (today's report there is merged and resumed), then copied to the results.
source scripts/gpu-env.sh
OUT=${OUT:-/tmp/out}; RES=/tmp/res; rm -rf "$RES"; mkdir -p "$OUT" "$RES"  # a warm machine keeps /tmp
summary=()
run_stage() {  # name seconds command...
  local name=$1 secs=$2; shift 2
  local start=$SECONDS
  timeout "$secs" "$@" > "$RES/$name.log" 2>&1; local rc=$?
  summary+=("$name rc=$rc $((SECONDS - start))s: $(grep -E 'passed|failed' "$RES/$name.log" | tail -1)")
}
for spec in "$@"; do
  name=${spec%%:*}; secs=${spec#*:}; [ "$secs" = "$spec" ] && secs=300
  case $name in
    ops-tests) run_stage $name $secs python3 -m pytest -q -n 8 -p no:cacheprovider tests/ops --ignore=tests/ops/challenge ;;
    challenge-tests) run_stage $name $secs python3 -m pytest -q -n 8 -p no:cacheprovider tests/ops/challenge ;;
    challenge-new) run_stage $name $secs python3 -m pytest -v -p no:cacheprovider \
      tests/ops/challenge/test_{conv_transpose2d,smooth_l1_loss,pixel_shuffle,pixel_unshuffle,avg_pool3d,max_pool3d,grid_sample}.py ;;
    engine-tests) run_stage $name $secs python3 -m pytest -q -p no:cacheprovider tests/engine tests/annotate ;;
    attention) run_stage $name $secs python3 -m flagstack.cli bench ops --suite attention --out-dir "$RES" ;;
    attn-sweep) run_stage $name $secs python3 -m flagstack.bench.attention --sweep --quick ;;
    attn-sweep-fp8) run_stage $name $secs python3 -m flagstack.bench.attention --sweep --quick --fp8 ;;
    annotate) run_stage $name $secs python3 -m flagstack.bench.annotate --out-dir "$RES" long ;;
    serve) run_stage $name $secs python3 -m flagstack.cli bench serve qwen3-4b --load-format dummy \
      --max-model-len 4096 --num-requests 100 --rates 4,16,inf --out-dir "$RES" ;;
    engine) run_stage $name $secs python3 -m flagstack.cli bench engine --out-dir "$RES" ;;
    engine-nohf) run_stage $name $secs python3 -m flagstack.cli bench engine --no-hf --out-dir "$RES" ;;
    engine-fp8) mkdir -p "$RES/fp8"; run_stage $name $secs python3 -m flagstack.cli bench engine --no-hf \
      --engine-arg kv_cache_dtype=fp8 --note "fp8 (e4m3) KV cache, scales 1.0" --out-dir "$RES/fp8" ;;
    fp8-tests) run_stage $name $secs python3 -m pytest -q -p no:cacheprovider tests/ops/attention \
      tests/engine/test_llm.py tests/engine/test_models.py tests/bench/test_engine_bench.py ;;
    ops-1) run_stage $name $secs python3 -m flagstack.cli bench ops --suite llm --rows 1 --out-dir "$RES" ;;
    ops-256) run_stage $name $secs python3 -m flagstack.cli bench ops --suite llm --rows 256 --out-dir "$RES" ;;
    ops-llm) run_stage $name $secs python3 -m flagstack.cli bench ops --suite llm --out-dir "$RES" ;;
    ops-challenge) run_stage $name $secs python3 -m flagstack.cli bench ops --suite challenge --out-dir "$RES" ;;
    score) run_stage $name $secs python3 -m flagstack.cli ops score --workers 8 --out-dir "$RES" ;;
    score-speed) run_stage $name $secs python3 -m flagstack.cli ops score --no-tests --out-dir "$RES" ;;
    profile) run_stage $name $secs python3 scripts/profile_decode.py ;;
    gemv-sweep) run_stage $name $secs python3 scripts/gemv_sweep.py "$RES/gemv-sweep.json" ;;
    gdr-sweep) run_stage $name $secs python3 scripts/gdr_state_sweep.py "$RES/gdr-sweep.json" ;;
    decode-short) run_stage $name $secs python3 scripts/decode_short_sweep.py ;;
    kv-layout) run_stage $name $secs python3 scripts/kv_layout_ab.py ;;
    decode-gap) run_stage $name $secs python3 scripts/decode_gap_probe.py ;;
    decode-tma) run_stage $name $secs python3 scripts/decode_tma_probe.py ;;
    b1-pdl) run_stage $name $secs python3 scripts/b1_decode_ab.py FLAGSTACK_PDL=0 FLAGSTACK_PDL=1 ;;
    new-tests) run_stage $name $secs python3 -m pytest -q -p no:cacheprovider tests/ops/test_gemv.py \
      tests/ops/test_qk_norm_rope.py tests/ops/attention tests/ops/test_registry.py ;;
    challenge-profile) run_stage $name $secs python3 scripts/challenge_profile.py ;;
    conv-probe) run_stage $name $secs python3 scripts/conv_probe.py ;;
    ctc-probe) run_stage $name $secs python3 scripts/ctc_probe.py ;;
    conv-ctc-tests) run_stage $name $secs python3 -m pytest -q -p no:cacheprovider \
      tests/ops/challenge/test_{conv_transpose2d,ctc_loss,channels_copy}.py ;;
    host-vs-gpu) run_stage $name $secs python3 scripts/host_vs_gpu_time.py ;;
    ops-graph) run_stage $name $secs python3 -m flagstack.cli bench ops --suite llm --cuda-graph --rows 256,4096 \
      --out-dir "$RES" ;;
    grid-tests) run_stage $name $secs python3 -m pytest -q -p no:cacheprovider tests/ops/challenge/test_grid_sample.py ;;
    rotary-probe) run_stage $name $secs python3 scripts/rotary_probe.py ;;
    gemv-probe) run_stage $name $secs python3 scripts/gemv_probe.py ;;
    bench-tests) run_stage $name $secs python3 -m pytest -q -p no:cacheprovider tests/bench tests/ops/test_gemv.py ;;
    conv-score) run_stage $name $secs python3 -m flagstack.cli ops score --no-tests --ops conv_transpose2d \
      --out-dir "$RES" ;;
    ops-graph-short) run_stage $name $secs python3 -m flagstack.cli bench ops --cuda-graph --rows 256,4096 \
      --ops add_rms_norm,rotary_embedding,embedding,silu_mul_gemv,gemv,silu --out-dir "$RES" ;;
    host-profile) run_stage $name $secs env FLAGSTACK_CPROFILE=30 python3 scripts/host_overhead.py conv_transpose2d \
      pixel_unshuffle ;;
    profile-b1) run_stage $name $secs env FLAGSTACK_PDL=0 python3 scripts/profile_decode.py --batches 1 --top 30 ;;
    score-part) run_stage $name $secs python3 -m flagstack.cli ops score --workers 8 ${SCORE_OPS:+--ops "$SCORE_OPS"} \
      ${SCORE_NOTE:+--note "$SCORE_NOTE"} $SCORE_FLAGS --out-dir bench/results; cp bench/results/score-* "$RES"/ ;;
    conv-tests) run_stage $name $secs python3 -m pytest -q -p no:cacheprovider tests/ops/test_launch_cache.py \
      tests/ops/challenge/test_{conv_transpose2d,channels_copy}.py ;;
    alloc-probe) run_stage $name $secs python3 scripts/alloc_probe.py ;;
    l2-prefetch) run_stage $name $secs python3 scripts/l2_prefetch_probe.py ;;
    gemv-bulk) run_stage $name $secs python3 scripts/gemv_bulk_probe.py ;;
    embedding-probe) run_stage $name $secs python3 scripts/embedding_probe.py ;;
    launch-cache-tests) run_stage $name $secs python3 -m pytest -q -n 14 -p no:cacheprovider tests/ops/test_launch_cache.py \
      tests/ops/challenge/test_{conv_transpose2d,channels_copy,smooth_l1_loss,grid_sample,pixel_shuffle,pixel_unshuffle}.py \
      tests/ops/challenge/test_{avg_pool3d,max_pool3d,scatter_reduce,asinh,cosh,gcd,leaky_relu,log10,logaddexp,tril}.py ;;
    *) summary+=("$name: unknown stage") ;;
  esac
  tar czf "$OUT/results.tgz" -C "$RES" .
done
for f in "$RES"/*.log; do echo "== $(basename "$f")"; grep -E "^FAILED|^ERROR|Error|target" "$f" | head -15; done
printf '%s\n' "${summary[@]}"
