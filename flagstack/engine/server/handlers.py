"""Generation for /v1/completions and /v1/chat/completions: the engine's delta streams turned into
OpenAI response bodies (whole) or server-sent-event chunks (streaming).

Every prompt of a request is one engine request; their deltas are merged through a queue. Closing
the merged stream (client gone, handler cancelled) cancels the pumps, and AsyncLLM.generate's
cleanup aborts each unfinished engine request, which frees its KV blocks.
"""
from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import AsyncIterator

from flagstack.engine.config import SamplingParams
from flagstack.engine.outputs import RequestOutput
from flagstack.engine.server.chat import OutputSplitter, SplitOutput, new_tool_call
from flagstack.engine.server.protocol import ApiError


@dataclass
class Choice:
    """One choice (a prompt's sample) built up from deltas."""

    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[dict] = field(default_factory=list)
    finish_reason: str | None = None
    stop_reason: int | str | None = None  # the stop string or token id that ended it


async def engine_outputs(ctx, ids: list[int], params: SamplingParams,
                         request_id: str) -> AsyncIterator[RequestOutput]:
    """One prompt's delta RequestOutputs; metrics recorded at finish, an abort counted if the consumer leaves;
    engine errors become ApiErrors (a bad prompt 400, a failed engine 503)."""
    generated = 0
    stream = ctx.engine.generate(ids, params, request_id)
    try:
        async for out in stream:
            generated += sum(len(c.token_ids) for c in out.outputs)
            if out.finished:
                ctx.metrics.observe(out, generated)
            yield out
    except (asyncio.CancelledError, GeneratorExit):  # the client left
        ctx.metrics.finished.labels("abort").inc(params.n)
        raise
    except ValueError as err:
        raise ApiError(str(err), "prompt") from err
    except Exception as err:  # noqa: BLE001 - answered as an error response or event
        raise ApiError(f"the engine failed: {err}", None, 503, "server_error") from err
    finally:
        await stream.aclose()  # now, not at garbage collection: AsyncLLM.generate aborts an unfinished request


async def merged_outputs(ctx, prompts: list[list[int]], params: SamplingParams,
                         request_id: str) -> AsyncIterator[tuple[int, RequestOutput]]:
    """(prompt index, delta RequestOutput) of every prompt as they come."""
    if len(prompts) == 1:  # the common case, without a task and a queue per streamed token
        async for out in engine_outputs(ctx, prompts[0], params, f"{request_id}-0"):
            yield 0, out
        return
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(i: int, ids: list[int]) -> None:
        try:
            async for out in engine_outputs(ctx, ids, params, f"{request_id}-{i}"):
                queue.put_nowait((i, out))
            queue.put_nowait((i, None))
        except ApiError as err:  # handed to the consumer, which answers with it
            queue.put_nowait((i, err))

    tasks = [asyncio.create_task(pump(i, ids)) for i, ids in enumerate(prompts)]
    try:
        remaining = len(tasks)
        while remaining:
            i, item = await queue.get()
            if item is None:
                remaining -= 1
            elif isinstance(item, ApiError):
                raise item
            else:
                yield i, item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class TokenText:
    """Token id -> its text (cached), for logprobs."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer, self.cache = tokenizer, {}

    def __call__(self, token: int) -> str:
        text = self.cache.get(token)
        if text is None:
            text = self.cache[token] = self.tokenizer.decode([token]) if self.tokenizer else str(token)
        return text


def completion_logprobs(text_of: TokenText, token_ids: list[int], logprobs: list[dict | None],
                        offset: int) -> dict:
    """The legacy completions logprobs object for these tokens (text offsets start at `offset`)."""
    out: dict = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for token, lp in zip(token_ids, logprobs):
        text = text_of(token)
        out["tokens"].append(text)
        out["token_logprobs"].append(None if lp is None else lp.get(token))
        out["top_logprobs"].append(None if lp is None else
                                   {text_of(t): v for t, v in sorted(lp.items(), key=lambda kv: -kv[1])})
        out["text_offset"].append(offset)
        offset += len(text)
    return out


def chat_logprobs(text_of: TokenText, token_ids: list[int], logprobs: list[dict], top_n: int) -> list[dict]:
    """The chat logprobs 'content' entries: each token with its logprob and the top_n alternatives."""
    def entry(token: int, value: float) -> dict:
        text = text_of(token)
        return {"token": text, "logprob": value, "bytes": list(text.encode("utf-8"))}

    out = []
    for token, lp in zip(token_ids, logprobs):
        top = sorted(lp.items(), key=lambda kv: -kv[1])[:top_n]
        out.append({**entry(token, lp[token]), "top_logprobs": [entry(t, v) for t, v in top]})
    return out


def usage(prompts: list[list[int]], choices: dict) -> dict:
    prompt_tokens = sum(len(p) for p in prompts)
    completion_tokens = sum(len(c.token_ids) for c in choices.values())
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def _update(choice: Choice, delta) -> None:
    choice.text += delta.text
    choice.token_ids += delta.token_ids
    if delta.logprobs is not None:
        choice.logprobs += delta.logprobs
    choice.finish_reason, choice.stop_reason = delta.finish_reason, delta.stop_reason


# -- /v1/completions ---------------------------------------------------------------------------------
@dataclass
class CompletionJob:
    ctx: object
    request_id: str
    prompts: list[list[int]]
    prompt_texts: list[str]
    params: SamplingParams
    echo: bool
    logprobs: int | None
    include_usage: bool = False
    created: int = field(default_factory=lambda: int(time.time()))

    def _head(self) -> dict:
        return {"id": self.request_id, "object": "text_completion", "created": self.created,
                "model": self.ctx.model_name}

    def _echo_logprobs(self, i: int, out: RequestOutput, text_of: TokenText) -> dict:
        ids = self.prompts[i]
        lps = out.prompt_logprobs or [None] * len(ids)
        return completion_logprobs(text_of, ids, lps, 0)

    async def whole(self) -> dict:
        """The complete response body."""
        n = self.params.n
        choices: dict[int, Choice] = {}
        prompt_lps: dict[int, dict] = {}
        text_of = TokenText(self.ctx.engine.tokenizer)
        async for i, out in merged_outputs(self.ctx, self.prompts, self.params, self.request_id):
            if self.echo and self.logprobs is not None and out.finished:
                prompt_lps[i] = self._echo_logprobs(i, out, text_of)
            for delta in out.outputs:
                _update(choices.setdefault(i * n + delta.index, Choice(i * n + delta.index)), delta)
        body = []
        for index in sorted(choices):
            c, i = choices[index], index // n
            prefix = self.prompt_texts[i] if self.echo else ""
            lp = None
            if self.logprobs is not None:
                lp = completion_logprobs(text_of, c.token_ids, c.logprobs, len(prefix))
                if self.echo:
                    lp = {k: prompt_lps[i][k] + lp[k] for k in lp}
            body.append({"index": index, "text": prefix + c.text, "logprobs": lp, "finish_reason": c.finish_reason,
                         "stop_reason": c.stop_reason})
        return {**self._head(), "choices": body, "usage": usage(self.prompts, choices)}

    async def chunks(self) -> AsyncIterator[dict]:
        """Streaming chunks (the caller frames them as SSE and ends with [DONE])."""
        n = self.params.n
        choices: dict[int, Choice] = {}
        text_of = TokenText(self.ctx.engine.tokenizer)
        async for i, out in merged_outputs(self.ctx, self.prompts, self.params, self.request_id):
            for delta in out.outputs:
                index = i * n + delta.index
                first = index not in choices
                c = choices.setdefault(index, Choice(index))
                offset = len(c.text)
                _update(c, delta)
                text = delta.text
                lp = None
                if self.logprobs is not None:
                    lp = completion_logprobs(text_of, delta.token_ids, delta.logprobs or [], offset)
                if first and self.echo:
                    text = self.prompt_texts[i] + text
                if not text and not delta.token_ids and delta.finish_reason is None:
                    continue
                yield {**self._head(), "choices": [{"index": index, "text": text, "logprobs": lp,
                                                    "finish_reason": delta.finish_reason}]}
        if self.include_usage:
            yield {**self._head(), "choices": [], "usage": usage(self.prompts, choices)}


# -- /v1/chat/completions ----------------------------------------------------------------------------
@dataclass
class ChatJob:
    ctx: object
    request_id: str
    prompt: list[int]
    params: SamplingParams
    top_logprobs: int | None  # None: no logprobs
    reasoning_open: bool
    parse_tools: bool
    forced_tool: bool = False  # tool_choice 'required' or a named function: the output is the call's JSON
    forced_name: str | None = None  # the named function (None for 'required': the output names it)
    include_usage: bool = False
    created: int = field(default_factory=lambda: int(time.time()))

    def _head(self) -> dict:
        return {"id": self.request_id, "object": "chat.completion.chunk", "created": self.created,
                "model": self.ctx.model_name}

    def _splitter(self) -> OutputSplitter:
        return OutputSplitter(self.reasoning_open, self.parse_tools)

    def _forced_call(self, text: str) -> SplitOutput:
        """tool_choice 'required' / named: the constrained JSON output as one tool call."""
        if self.forced_name is not None:
            return SplitOutput(tool_calls=[new_tool_call(self.forced_name, text)])
        try:
            data = json.loads(text)
            return SplitOutput(tool_calls=[new_tool_call(data["name"], data.get("arguments", {}))])
        except (json.JSONDecodeError, KeyError, TypeError):
            return SplitOutput(content=text)

    def _split(self, splitter: OutputSplitter, text: str, final: bool) -> SplitOutput:
        if self.forced_tool:
            return self._forced_call(text) if final else SplitOutput()
        return splitter.split(text, final)

    @staticmethod
    def _finish(choice: Choice, split: SplitOutput) -> str | None:
        if choice.finish_reason is None:
            return None
        return "tool_calls" if split.tool_calls and choice.finish_reason == "stop" else choice.finish_reason

    async def whole(self) -> dict:
        choices: dict[int, Choice] = {}
        async for _, out in merged_outputs(self.ctx, [self.prompt], self.params, self.request_id):
            for delta in out.outputs:
                _update(choices.setdefault(delta.index, Choice(delta.index)), delta)
        text_of = TokenText(self.ctx.engine.tokenizer)
        body = []
        for index in sorted(choices):
            c = choices[index]
            split = self._split(self._splitter(), c.text, final=True)
            content = split.content.strip() if split.tool_calls or split.reasoning else split.content
            message: dict = {"role": "assistant", "content": None if split.tool_calls and not content else content}
            if split.reasoning:
                message["reasoning_content"] = split.reasoning.strip()
            if split.tool_calls:
                message["tool_calls"] = split.tool_calls
            lp = None
            if self.top_logprobs is not None:
                lp = {"content": chat_logprobs(text_of, c.token_ids, c.logprobs, self.top_logprobs)}
            body.append({"index": index, "message": message, "logprobs": lp, "finish_reason": self._finish(c, split)})
        return {**self._head(), "object": "chat.completion", "choices": body,
                "usage": usage([self.prompt], choices)}

    async def chunks(self) -> AsyncIterator[dict]:
        n = self.params.n
        choices = {i: Choice(i) for i in range(n)}
        splitters = {i: self._splitter() for i in range(n)}
        sent = {i: SplitOutput() for i in range(n)}
        text_of = TokenText(self.ctx.engine.tokenizer)
        for i in range(n):
            yield {**self._head(), "choices": [{"index": i, "delta": {"role": "assistant", "content": ""},
                                                "logprobs": None, "finish_reason": None}]}
        async for _, out in merged_outputs(self.ctx, [self.prompt], self.params, self.request_id):
            for d in out.outputs:
                c = choices[d.index]
                _update(c, d)
                split = self._split(splitters[d.index], c.text, final=d.finish_reason is not None)
                delta = self._new_parts(split, sent[d.index])
                lp = None
                if self.top_logprobs is not None and d.token_ids:
                    lp = {"content": chat_logprobs(text_of, d.token_ids, d.logprobs or [], self.top_logprobs)}
                finish = self._finish(c, split)
                if delta or lp or finish:
                    yield {**self._head(), "choices": [{"index": d.index, "delta": delta, "logprobs": lp,
                                                        "finish_reason": finish}]}
        if self.include_usage:
            yield {**self._head(), "choices": [], "usage": usage([self.prompt], choices)}

    @staticmethod
    def _new_parts(split: SplitOutput, sent: SplitOutput) -> dict:
        """What `split` adds to what was already sent (and record it as sent)."""
        delta: dict = {}
        if len(split.reasoning) > len(sent.reasoning):
            delta["reasoning_content"] = split.reasoning[len(sent.reasoning):]
            sent.reasoning = split.reasoning
        if len(split.content) > len(sent.content):
            delta["content"] = split.content[len(sent.content):]
            sent.content = split.content
        if len(split.tool_calls) > len(sent.tool_calls):
            delta["tool_calls"] = [{"index": k, **call} for k, call in
                                   enumerate(split.tool_calls) if k >= len(sent.tool_calls)]
            sent.tool_calls = list(split.tool_calls)
        return delta


def new_request_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"
