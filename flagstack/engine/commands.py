"""`flagstack generate` and `flagstack chat`: the engine on the command line (embedded model by default).

Only argparse here at import time; the engine loads inside the handlers.
"""
from __future__ import annotations

import argparse
import sys

from flagstack.engine.server.command import add_kv_cache_dtype_flag


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="HF directory or .gguf file (default: embedded SmolLM2-135M)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"])
    p.add_argument("--max-model-len", type=int, default=4096)
    add_kv_cache_dtype_flag(p)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--seed", type=int, default=None)


def _llm_and_params(args: argparse.Namespace):
    from flagstack.engine.config import SamplingParams
    from flagstack.engine.llm import LLM

    params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p,
                            top_k=args.top_k, seed=args.seed)
    llm = LLM(args.model, device=args.device, dtype=args.dtype, max_model_len=args.max_model_len,
              kv_cache_dtype=args.kv_cache_dtype)
    return llm, params


def _generate(args: argparse.Namespace) -> int:
    llm, params = _llm_and_params(args)
    out = llm.generate(args.prompt, params)[0].outputs[0]
    print(args.prompt + out.text)
    return 0


def _chat(args: argparse.Namespace) -> int:
    llm, params = _llm_and_params(args)
    history = [{"role": "system", "content": args.system}] if args.system else []

    def reply(text: str) -> None:
        history.append({"role": "user", "content": text})
        answer = llm.chat(history, params)[0].outputs[0].text
        history.append({"role": "assistant", "content": answer})
        print(answer, flush=True)

    if args.message is not None:
        reply(args.message)
        return 0
    interactive = sys.stdin.isatty()
    while True:
        if interactive:
            print("> ", end="", flush=True)
        line = sys.stdin.readline()
        if not line or line.strip() in ("/exit", "/quit"):
            return 0
        if line.strip():
            reply(line.strip())


def add_engine_commands(sub: argparse._SubParsersAction) -> None:
    gen = sub.add_parser("generate", help="complete a prompt with the engine")
    gen.add_argument("prompt")
    _add_model_args(gen)
    gen.set_defaults(func=_generate)
    chat = sub.add_parser("chat", help="chat with the model: a REPL on stdin, or one --message")
    chat.add_argument("--message", default=None, help="send one message, print the reply, exit")
    chat.add_argument("--system", default=None, help="system prompt")
    _add_model_args(chat)
    chat.set_defaults(func=_chat)
