# Engine A/B of the paged-decode launch config for unsplit batches (session 11, H200): `bench engine --no-hf`
# with UNSPLIT at its old value (128-token tiles, 4 warps, 2 stages) and at the current one, alternated twice.
# Run on the GPU machine from the repo root: `bash scripts/engine_decode_tile_ab.sh`.
F=flagstack/ops/attention/paged_decode.py; cp $F /tmp/new.py
sed 's/^UNSPLIT = DecodeConfig(block_n=64, num_splits=1, num_warps=2, num_stages=4)/UNSPLIT = DecodeConfig(block_n=128, num_splits=1)/' $F > /tmp/old.py
grep -q "block_n=128, num_splits=1)" /tmp/old.py || { echo 'UNSPLIT not found'; exit 1; }
source scripts/gpu-env.sh >/dev/null 2>&1
for v in old new old new; do cp /tmp/$v.py $F; timeout 140 python3 -m flagstack.cli bench engine --no-hf --out-dir /tmp/ab-$v-$RANDOM 2>&1 | grep "^| " | grep -v "^| case\|---" | cut -d'|' -f2,4,5,6,8 | sed "s/^/$v /"; done
