"""The FastAPI app over AsyncLLM: routes, api-key check, OpenAI error bodies, SSE, metrics, and
`serve()` (uvicorn; on SIGTERM it stops accepting, lets running requests finish, then exits)."""
from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from dataclasses import dataclass
from typing import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.datastructures import Headers

from flagstack.engine.server import params as P
from flagstack.engine.server.chat import forced_tool_schema, prompt_opens_reasoning, render_chat
from flagstack.engine.server.handlers import ChatJob, CompletionJob, new_request_id
from flagstack.engine.server.metrics import ServerMetrics
from flagstack.engine.server.protocol import (ApiError, ChatCompletionRequest, CompletionRequest, DetokenizeRequest,
                                              TokenizeRequest, parse_body)

OPEN_PATHS = ("/health", "/metrics")  # answered without the api key
DISCONNECT_POLL_S = 0.5
GIL_SWITCH_INTERVAL_S = 0.0005


@dataclass
class ServerContext:
    engine: object  # AsyncLLM
    model_name: str
    metrics: ServerMetrics
    structured: object | None  # StructuredOutputs, None without a tokenizer
    api_key: str | None

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        if self.engine.tokenizer is None:
            raise ApiError("prompt: this model has no tokenizer; send token ids", "prompt")
        return list(self.engine.tokenizer.encode(text, add_special_tokens=add_special_tokens))

    def check_model(self, model: str | None) -> None:
        if model is not None and model != self.model_name:
            raise ApiError(f"model: '{model}' is not served here; this server serves '{self.model_name}'", "model",
                           kind="model_not_found")


def default_structured(engine) -> object | None:
    if engine.tokenizer is None:
        return None
    from flagstack.engine.structured import StructuredOutputs

    return StructuredOutputs(engine.tokenizer, engine.vocab_size, engine.eos_token_ids)


class AuthAndCount:
    """ASGI middleware: the api-key check and the per-route request counter. Plain ASGI rather than
    `@app.middleware("http")`, whose wrapper re-streams every SSE chunk through an extra task."""

    def __init__(self, app, api_key: str | None, metrics: ServerMetrics, known_paths: set[str]) -> None:
        self.app, self.api_key, self.metrics, self.known_paths = app, api_key, metrics, known_paths

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        route = path if path in self.known_paths else "other"
        if self.api_key and path not in OPEN_PATHS and \
                Headers(scope=scope).get("authorization") != f"Bearer {self.api_key}":
            response = JSONResponse(ApiError("invalid or missing api key (Authorization: Bearer ...)", None, 401,
                                             "authentication_error").body(), status_code=401)
            await response(scope, receive, send)
            self.metrics.http_requests.labels(route, "401").inc()
            return
        status = [500]  # if the app fails before it starts a response

        async def send_and_note_status(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)
        try:
            await self.app(scope, receive, send_and_note_status)
        finally:
            self.metrics.http_requests.labels(route, str(status[0])).inc()


def build_app(engine, model_name: str, api_key: str | None = None) -> FastAPI:
    """The OpenAI-compatible app serving `engine` (an AsyncLLM) under `model_name`."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        engine.shutdown()

    app = FastAPI(title="flagstack", lifespan=lifespan)
    ctx = ServerContext(engine, model_name, ServerMetrics(), default_structured(engine), api_key)
    app.state.ctx = ctx

    known_paths: set[str] = set()  # filled once the routes below exist; labels of the request counter
    app.add_middleware(AuthAndCount, api_key=api_key, metrics=ctx.metrics, known_paths=known_paths)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, err: ApiError):
        return JSONResponse(err.body(), status_code=err.status)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, err: Exception):  # a bug: say so, keep serving
        return JSONResponse(ApiError(f"internal error: {type(err).__name__}: {err}", None, 500,
                                     "server_error").body(), status_code=500)

    @app.get("/health")
    async def health():
        if engine.error is not None:
            return JSONResponse({"status": "engine failed"}, status_code=503)
        return {"status": "ok"}

    @app.get("/metrics")
    async def metrics():
        try:
            stats = await engine.live_stats()
        except RuntimeError:  # the engine is gone: /health says so; the counters are still worth reading
            stats = {}
        return Response(ctx.metrics.render(stats), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": int(time.time()),
                                            "owned_by": "flagstack", "max_model_len": ctx.engine.max_model_len}]}

    @app.post("/v1/completions")
    async def completions(request: Request):
        req = parse_body(CompletionRequest, await request.body())
        ctx.check_model(req.model)
        prompts, texts = completion_prompts(ctx, req)
        for ids in prompts:
            P.check_prompt(ids, ctx.engine.vocab_size, ctx.engine.max_model_len, req.max_tokens, "prompt")
        factory = await constraint(ctx, req)
        params = P.sampling_params(req, req.max_tokens, req.logprobs, req.logprobs if req.echo else None, factory)
        job = CompletionJob(ctx, new_request_id("cmpl"), prompts, texts, params, req.echo, req.logprobs,
                            bool(req.stream_options and req.stream_options.include_usage))
        return await respond(request, job, req.stream)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        req = parse_body(ChatCompletionRequest, await request.body())
        ctx.check_model(req.model)
        if req.top_logprobs is not None and not req.logprobs:
            raise ApiError("top_logprobs: needs logprobs=true", "top_logprobs")
        forced = forced_tool_schema(req)
        if forced is not None and P.structured_spec(req) is not None:
            raise ApiError("tool_choice: a forced tool call cannot be combined with structured outputs", "tool_choice")
        text = render_chat(ctx.engine.tokenizer, req)
        ids = ctx.encode(text, add_special_tokens=False)
        max_tokens = req.max_completion_tokens or req.max_tokens
        P.check_prompt(ids, ctx.engine.vocab_size, ctx.engine.max_model_len, max_tokens, "messages")
        if forced is not None:
            factory = await P.constraint_factory(ctx.structured, "json", forced[0], "tool_choice")
        else:
            factory = await constraint(ctx, req)
        logprobs = (req.top_logprobs or 0) if req.logprobs else None
        params = P.sampling_params(req, max_tokens, logprobs, None, factory)
        job = ChatJob(ctx, new_request_id("chatcmpl"), ids, params, logprobs, prompt_opens_reasoning(text),
                      parse_tools=bool(req.tools) and req.tool_choice in (None, "auto"),
                      forced_tool=forced is not None, forced_name=forced[1] if forced else None,
                      include_usage=bool(req.stream_options and req.stream_options.include_usage))
        return await respond(request, job, req.stream)

    @app.post("/tokenize")
    async def tokenize(request: Request):
        req = parse_body(TokenizeRequest, await request.body())
        ctx.check_model(req.model)
        if (req.prompt is None) == (req.messages is None):
            raise ApiError("prompt: give exactly one of 'prompt' and 'messages'", "prompt")
        if req.messages is not None:
            chat = ChatCompletionRequest(messages=req.messages, add_generation_prompt=req.add_generation_prompt,
                                         chat_template_kwargs=req.chat_template_kwargs)
            ids = ctx.encode(render_chat(ctx.engine.tokenizer, chat), add_special_tokens=False)
        else:
            ids = ctx.encode(req.prompt, req.add_special_tokens)
        return {"tokens": ids, "count": len(ids), "max_model_len": ctx.engine.max_model_len}

    @app.post("/detokenize")
    async def detokenize(request: Request):
        req = parse_body(DetokenizeRequest, await request.body())
        ctx.check_model(req.model)
        if ctx.engine.tokenizer is None:
            raise ApiError("tokens: this model has no tokenizer", "tokens")
        if req.tokens and (min(req.tokens) < 0 or max(req.tokens) >= ctx.engine.vocab_size):
            raise ApiError(f"tokens: ids must be in [0, {ctx.engine.vocab_size})", "tokens")
        return {"prompt": ctx.engine.tokenizer.decode(req.tokens)}

    known_paths.update(route.path for route in app.routes)
    return app


def completion_prompts(ctx: ServerContext, req: CompletionRequest) -> tuple[list[list[int]], list[str]]:
    """Token ids and text of every prompt (a string, strings, token ids, or lists of token ids)."""
    prompt = req.prompt
    if isinstance(prompt, str) or (isinstance(prompt, list) and prompt and isinstance(prompt[0], int)):
        prompt = [prompt]
    if not prompt:
        raise ApiError("prompt: must not be empty", "prompt")
    if len(prompt) * req.n > 256:
        raise ApiError("prompt: at most 256 prompts x n per request", "prompt")
    ids, texts = [], []
    tokenizer = ctx.engine.tokenizer
    for p in prompt:
        if isinstance(p, str):
            ids.append(ctx.encode(p))
            texts.append(p)
        else:
            ids.append(list(p))
            texts.append(tokenizer.decode(p) if tokenizer is not None and p and max(p) < ctx.engine.vocab_size
                         and min(p) >= 0 else "")
    return ids, texts


async def constraint(ctx: ServerContext, req):
    spec = P.structured_spec(req)
    if spec is None:
        return None
    return await P.constraint_factory(ctx.structured, *spec)


async def respond(request: Request, job, stream: bool):
    """Run a job: SSE chunks ending in [DONE], or the whole body (abandoned if the client leaves)."""
    if stream:
        return StreamingResponse(sse(job.chunks()), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})
    task = asyncio.ensure_future(job.whole())
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
            if done:
                return task.result()
            if await request.is_disconnected():
                task.cancel()  # aborts the engine requests
                return Response(status_code=499)
    finally:
        if not task.done():
            task.cancel()


async def sse(chunks: AsyncIterator[dict]) -> AsyncIterator[str]:
    try:
        async for chunk in chunks:
            yield f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"
    except ApiError as err:  # after the headers went out: an error event, then the end
        yield f"data: {json.dumps(err.body())}\n\n"
    yield "data: [DONE]\n\n"


def serve(model: str | None = None, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
          served_model_name: str | None = None, log_level: str = "warning", engine_process: bool | None = None,
          **engine_kwargs) -> None:
    """Load the model, then serve it until SIGINT/SIGTERM (running requests finish first). engine_process:
    the engine in a child process (None: on CUDA only; see AsyncLLM)."""
    import uvicorn

    from flagstack.engine.llm import AsyncLLM

    # The engine thread (or, with an engine process, the thread reading its outputs) gives up the GIL in
    # every blocking call and must win it back from the event loop; Python's default 5 ms switch interval
    # made each of those waits up to 5 ms under load.
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    engine = AsyncLLM(model, engine_process=engine_process, **engine_kwargs)
    name = served_model_name or model_display_name(model)
    app = build_app(engine, name, api_key)
    where = "an engine process" if engine.engine_process else "an engine thread"
    print(f"flagstack serve: '{name}' on http://{host}:{port} (max_model_len {engine.max_model_len}, "
          f"{engine.num_kv_blocks} KV blocks, {where})", flush=True)
    uvicorn.run(app, host=host, port=port, log_level=log_level)


def model_display_name(model: str | None) -> str:
    """The name /v1/models reports: the embedded model's, or the path's last part."""
    if model is None:
        return "SmolLM2-135M-Instruct"
    from pathlib import Path

    path = Path(model.rstrip("/"))
    return path.stem if path.suffix == ".gguf" else path.name or model
