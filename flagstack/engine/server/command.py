"""`flagstack serve [MODEL]` and the engine flags it shares with `flagstack bench serve`
(argparse only at import time; the engine loads inside the handler)."""
from __future__ import annotations

import argparse

from flagstack.engine.config import KV_CACHE_DTYPES, EngineConfig


def add_engine_flags(p: argparse.ArgumentParser) -> None:
    """EngineConfig fields as command-line flags (defaults: EngineConfig's)."""
    p.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"])
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--load-format", default="auto", choices=["auto", "safetensors", "gguf", "dummy"])
    p.add_argument("--max-model-len", type=int, default=None, help="context length (default: the model's)")
    p.add_argument("--max-num-seqs", type=int, default=256, help="sequences per step")
    p.add_argument("--max-num-batched-tokens", type=int, default=EngineConfig.max_num_batched_tokens,
                   help="new tokens per step")
    p.add_argument("--block-size", type=int, default=16)
    add_kv_cache_dtype_flag(p)
    p.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    p.add_argument("--num-kv-blocks", type=int, default=None, help="fixed KV pool size in blocks")
    p.add_argument("--no-prefix-caching", action="store_true")
    p.add_argument("--no-chunked-prefill", action="store_true")
    p.add_argument("--enforce-eager", action="store_true", help="no CUDA graphs")
    p.add_argument("--seed", type=int, default=0)


def add_kv_cache_dtype_flag(p: argparse.ArgumentParser) -> None:
    """--kv-cache-dtype, shared by `serve` and `generate` / `chat`."""
    p.add_argument("--kv-cache-dtype", default="auto", choices=KV_CACHE_DTYPES,
                   help="fp8: e4m3 KV cache, half the bytes (default auto: the model's dtype)")


def engine_kwargs(args: argparse.Namespace) -> dict:
    """The EngineConfig keyword arguments named by add_engine_flags."""
    return dict(dtype=args.dtype, device=args.device, load_format=args.load_format, max_model_len=args.max_model_len,
                max_num_seqs=args.max_num_seqs, max_num_batched_tokens=args.max_num_batched_tokens,
                block_size=args.block_size, kv_cache_dtype=args.kv_cache_dtype,
                gpu_memory_utilization=args.gpu_memory_utilization,
                num_kv_blocks=args.num_kv_blocks, enable_prefix_caching=not args.no_prefix_caching,
                enable_chunked_prefill=not args.no_chunked_prefill, enforce_eager=args.enforce_eager,
                seed=args.seed)


def _serve(args: argparse.Namespace) -> int:
    from flagstack.engine.server.app import serve

    serve(args.model, host=args.host, port=args.port, api_key=args.api_key,
          served_model_name=args.served_model_name, log_level=args.log_level, engine_process=args.engine_process,
          **engine_kwargs(args))
    return 0


def add_serve_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="OpenAI-compatible HTTP server (completions, chat, streaming, metrics)")
    p.add_argument("model", nargs="?", default=None,
                   help="HF directory, .gguf file or bundled config name (default: embedded SmolLM2-135M)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' (else 401)")
    p.add_argument("--served-model-name", default=None, help="the model id clients send (default: from MODEL)")
    p.add_argument("--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug"])
    p.add_argument("--engine-process", action=argparse.BooleanOptionalAction, default=None,
                   help="run the engine in a child process, apart from the HTTP event loop "
                        "(default: on with CUDA, off on CPU)")
    add_engine_flags(p)
    p.set_defaults(func=_serve)
