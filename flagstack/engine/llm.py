"""User entry points: `LLM` (offline batches, vLLM-like) and `AsyncLLM` (asyncio streaming, for the
HTTP server). Both drive one EngineCore."""
from __future__ import annotations

import asyncio
import itertools
import threading
import time
from typing import AsyncIterator, Sequence as Seq

import torch

from flagstack.engine.config import EngineConfig, SamplingParams
from flagstack.engine.core import EngineCore
from flagstack.engine.outputs import DeltaTracker, RequestOutput, merge_deltas, request_output

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
Prompt = str | list[int]


def build_engine(model: str | None, **engine_kwargs) -> EngineCore:
    """Load `model` (None: the embedded SmolLM2) and build the engine; kwargs are EngineConfig fields."""
    from flagstack.engine.loader import load_model

    config = EngineConfig(**engine_kwargs)
    device = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = _DTYPES[config.dtype] if config.dtype else None
    loaded = load_model(model, dtype=dtype, device=device, load_format=config.load_format)
    return EngineCore(loaded, config)


def _as_list(prompts: Prompt | Seq[Prompt]) -> list[Prompt]:
    """One prompt (a string or a list of token ids) or a list of prompts, as a list of prompts."""
    if isinstance(prompts, str) or (isinstance(prompts, list) and prompts and isinstance(prompts[0], int)):
        return [prompts]
    if not isinstance(prompts, (list, tuple)) or not prompts:
        raise ValueError("prompts must be a string, a list of token ids, or a non-empty list of those")
    return list(prompts)


class LLM:
    """Offline generation: `LLM().generate(prompts, params)` returns one RequestOutput per prompt."""

    def __init__(self, model: str | None = None, **engine_kwargs) -> None:
        self.engine = build_engine(model, **engine_kwargs)
        self.tokenizer = self.engine.tokenizer
        self._ids = itertools.count()

    def generate(self, prompts: Prompt | Seq[Prompt], params: SamplingParams | Seq[SamplingParams] | None = None,
                 ) -> list[RequestOutput]:
        """Run every prompt to completion (continuously batched); outputs in the prompts' order."""
        prompts = _as_list(prompts)
        params = params or SamplingParams()
        param_list = [params] * len(prompts) if isinstance(params, SamplingParams) else list(params)
        if len(param_list) != len(prompts):
            raise ValueError(f"params: got {len(param_list)} SamplingParams for {len(prompts)} prompts")
        requests = []
        try:
            for prompt, p in zip(prompts, param_list):
                requests.append(self.engine.add_request(f"offline-{next(self._ids)}", prompt, p))
            while self.engine.has_unfinished():
                self.engine.step()
        except BaseException:
            for request in requests:
                self.engine.abort(request.request_id)
            raise
        now = time.time()
        return [request_output(r, now) for r in requests]

    def chat(self, messages: list[dict] | list[list[dict]], params: SamplingParams | Seq[SamplingParams] | None = None,
             chat_template_kwargs: dict | None = None) -> list[RequestOutput]:
        """Generate replies to one conversation (a list of {'role', 'content'}) or a list of them."""
        conversations = [messages] if messages and isinstance(messages[0], dict) else messages
        return self.generate([self.apply_chat_template(c, chat_template_kwargs) for c in conversations], params)

    def apply_chat_template(self, conversation: list[dict], chat_template_kwargs: dict | None = None) -> list[int]:
        """The prompt token ids of a conversation, ending with the assistant's turn opening."""
        if self.tokenizer is None or not getattr(self.tokenizer, "chat_template", None):
            raise ValueError("messages: this model has no chat template")
        if not conversation or not all(isinstance(m, dict) and "role" in m and "content" in m for m in conversation):
            raise ValueError("messages must be a non-empty list of {'role': ..., 'content': ...} dicts")
        ids = self.tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=True,
                                                 **(chat_template_kwargs or {}))
        return list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)

    def get_stats(self) -> dict[str, float]:
        """Prefix-cache hit rate, prompt tokens sent vs computed, KV usage, preemptions."""
        return self.engine.stats()


class AsyncLLM:
    """Streaming engine: a background thread steps the engine while requests are pending;
    `async for out in engine.generate(prompt, params, request_id)` yields deltas."""

    def __init__(self, model: str | None = None, **engine_kwargs) -> None:
        self.engine = build_engine(model, **engine_kwargs)
        self.tokenizer = self.engine.tokenizer
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._streams: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue, DeltaTracker]] = {}
        self._stopped = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name="flagstack-engine", daemon=True)
        self._thread.start()

    async def generate(self, prompt: Prompt, params: SamplingParams | None = None,
                       request_id: str | None = None) -> AsyncIterator[RequestOutput]:
        """Yield RequestOutputs holding the new text/tokens since the previous one; the last has finished=True."""
        if self._error is not None:
            raise RuntimeError("the engine loop has failed") from self._error
        request_id = request_id or f"async-{id(object())}-{time.monotonic_ns()}"
        params = params or SamplingParams()
        queue: asyncio.Queue = asyncio.Queue()
        loop = asyncio.get_running_loop()
        # the text is decoded here, on the event loop, unless the engine keeps it for stop strings
        tracker = DeltaTracker(None if params.stop_strings else self.tokenizer, params.skip_special_tokens)
        # the engine thread holds the lock for a whole step: wait for it in a worker thread, so the
        # event loop (other streams, /health) keeps running meanwhile
        adding = loop.run_in_executor(None, self._add, request_id, prompt, params, (loop, queue, tracker))
        try:
            await asyncio.shield(adding)
        except asyncio.CancelledError:  # the consumer left while waiting: abort once the add lands
            adding.add_done_callback(lambda f: f.exception() or loop.run_in_executor(None, self.abort, request_id))
            raise
        self._wake.set()
        finished = False
        try:
            while True:
                items = [await queue.get()]
                while not queue.empty():  # fell behind the engine: one merged delta for all of them
                    items.append(queue.get_nowait())
                failure = next((i for i in items if isinstance(i, BaseException)), None)
                if failure is not None:
                    raise RuntimeError("the engine loop has failed") from failure
                item = tracker.add_text(merge_deltas(items))
                yield item
                if item.finished:
                    finished = True
                    return
        finally:
            if not finished:  # the consumer stopped early: free its blocks (off the event loop, as above)
                await loop.run_in_executor(None, self.abort, request_id)

    def _add(self, request_id: str, prompt: Prompt, params: SamplingParams, stream: tuple) -> None:
        with self._lock:
            self.engine.add_request(request_id, prompt, params)
            self._streams[request_id] = stream

    def abort(self, request_id: str) -> bool:
        """Stop a request and free its KV blocks; its stream ends with finish_reason 'abort'."""
        with self._lock:
            request = self.engine.requests.get(request_id)
            found = self.engine.abort(request_id)
            stream = self._streams.pop(request_id, None)
        if found and stream is not None:
            loop, queue, tracker = stream
            loop.call_soon_threadsafe(queue.put_nowait, request_output(request, time.time(), tracker))
        return found

    def get_stats(self) -> dict[str, float]:
        with self._lock:
            return self.engine.stats()

    def shutdown(self) -> None:
        """Stop the background loop (pending requests are left unfinished)."""
        self._stopped = True
        self._wake.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stopped:
            self._wake.wait()
            with self._lock:
                if not self.engine.has_unfinished():
                    self._wake.clear()
                    continue
                try:
                    touched = self.engine.step()
                except BaseException as err:  # report to every waiting consumer, then stop
                    self._error = err
                    for loop, queue, _ in self._streams.values():
                        loop.call_soon_threadsafe(queue.put_nowait, err)
                    self._streams.clear()
                    return
                now = time.time()
                deliveries: dict[asyncio.AbstractEventLoop, list] = {}
                for request in touched:
                    stream = self._streams.get(request.request_id)
                    if stream is None:
                        continue
                    loop, queue, tracker = stream
                    out = request_output(request, now, tracker)
                    if out.finished:
                        del self._streams[request.request_id]
                    deliveries.setdefault(loop, []).append((queue, out))
                # one wake-up of each event loop per step, not one per request (with a hundred streams
                # the per-call cost, a self-pipe write and a callback, took the GIL from this thread);
                # still under the lock, so an abort's final output cannot overtake this step's
                for loop, items in deliveries.items():
                    loop.call_soon_threadsafe(_deliver, items)


def _deliver(items: list[tuple[asyncio.Queue, RequestOutput]]) -> None:
    """Hand one engine step's deltas to their streams (runs on the streams' event loop)."""
    for queue, out in items:
        queue.put_nowait(out)
