#!/usr/bin/env bash
# Fill .whl/ (ignored by git) with every wheel the GPU machine lacks, for `run --carry .whl`:
# the anchors (FlagGems, Liger), gguf, and the server stack. fastapi stays at 0.115: 0.165 imports
# opentelemetry at start-up, which that machine does not have (the first serve bench failed on it).
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
../shared/scripts/gpu-wheels
../shared/scripts/gpu-wheels fastapi==0.115.12 starlette==0.46.2 uvicorn==0.54.0 pydantic==2.14.4 \
  pydantic_core==2.50.5 annotated_types==0.8.0 typing_inspection==0.4.5 anyio==4.16.0 sniffio==1.3.1 \
  h11==0.16.0 httpx==0.28.1 httpcore==1.0.9 idna==3.20 certifi click==8.5.1 prometheus_client==0.26.0 \
  xgrammar==0.2.8 apache-tvm-ffi==0.1.15.post2 uvloop==0.23.0 httptools==0.9.0 \
  pytest-xdist==3.8.0 execnet==2.1.2
