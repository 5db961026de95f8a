"""User entry points: `LLM` (offline batches, vLLM-like) and `AsyncLLM` (asyncio streaming, for the
HTTP server). Both drive one EngineCore."""
from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import queue
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
    `async for out in engine.generate(prompt, params, request_id)` yields deltas.

    New requests and aborts reach the engine thread through an inbox that it empties before every
    step, rather than by taking the step lock: a lock released and retaken at every step starved the
    waiting threads (the last of 100 simultaneous requests was admitted 6 s late on an H100)."""

    def __init__(self, model: str | None = None, **engine_kwargs) -> None:
        self.engine = build_engine(model, **engine_kwargs)
        self.tokenizer = self.engine.tokenizer
        self._lock = threading.Lock()  # held by the engine thread for a step; get_stats reads under it
        self._wake = threading.Event()
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()  # ("add", ...) and ("abort", ...) messages
        self._streams: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue, DeltaTracker]] = {}
        self._stopped = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name="flagstack-engine", daemon=True)
        self._thread.start()

    async def generate(self, prompt: Prompt, params: SamplingParams | None = None,
                       request_id: str | None = None) -> AsyncIterator[RequestOutput]:
        """Yield RequestOutputs holding the new text/tokens since the previous one; the last has finished=True.
        A bad request raises ValueError at the first iteration."""
        if self._error is not None:
            raise RuntimeError("the engine loop has failed") from self._error
        request_id = request_id or f"async-{id(object())}-{time.monotonic_ns()}"
        params = params or SamplingParams()
        stream: asyncio.Queue = asyncio.Queue()
        loop = asyncio.get_running_loop()
        # the text is decoded here, on the event loop, unless the engine keeps it for stop strings
        tracker = DeltaTracker(None if params.stop_strings else self.tokenizer, params.skip_special_tokens)
        added = loop.create_future()
        self._send(("add", request_id, prompt, params, (loop, stream, tracker), added))
        self._answer_if_dead()
        finished = False
        try:
            await added  # the engine thread's add_request: raises its ValueError for a bad request
            while True:
                items = [await stream.get()]
                while not stream.empty():  # fell behind the engine: one merged delta for all of them
                    items.append(stream.get_nowait())
                failure = next((i for i in items if isinstance(i, BaseException)), None)
                if failure is not None:
                    raise RuntimeError("the engine loop has failed") from failure
                item = tracker.add_text(merge_deltas(items))
                yield item
                if item.finished:
                    finished = True
                    return
        finally:
            if not finished:  # the consumer stopped early (or the add failed): free its blocks
                self._send(("abort", request_id, None))

    def abort(self, request_id: str) -> bool:
        """Stop a request and free its KV blocks; its stream ends with finish_reason 'abort'. Waits
        for the engine thread (at most a step); False if the request is unknown or already done."""
        if self._stopped or self._error is not None or threading.current_thread() is self._thread:
            with self._lock:
                return self._abort_now(request_id)
        done: concurrent.futures.Future = concurrent.futures.Future()
        self._send(("abort", request_id, done))
        while True:
            try:
                return done.result(timeout=1.0)
            except concurrent.futures.TimeoutError:
                self._answer_if_dead()

    def get_stats(self) -> dict[str, float]:
        with self._lock:
            return self.engine.stats()

    def shutdown(self) -> None:
        """Stop the background loop (pending requests are left unfinished)."""
        self._stopped = True
        self._wake.set()
        self._thread.join()
        self._answer_if_dead()  # what arrived too late: adds fail, aborts are applied

    def _send(self, message: tuple) -> None:
        self._inbox.put(message)
        self._wake.set()

    def _answer_if_dead(self) -> None:
        """The engine thread has stopped or failed: apply the inbox here (adds fail, aborts answer)."""
        if not self._thread.is_alive():
            with self._lock:
                self._take_inbox()

    def _take_inbox(self) -> None:
        """Apply the queued adds and aborts (engine thread, or after it stopped)."""
        while True:
            try:
                message = self._inbox.get_nowait()
            except queue.Empty:
                return
            if message[0] == "abort":
                _, request_id, done = message
                found = self._abort_now(request_id)
                if done is not None:
                    done.set_result(found)
                continue
            _, request_id, prompt, params, stream, added = message
            loop = stream[0]
            try:
                if self._stopped or self._error is not None:
                    raise RuntimeError("the engine is shut down" if self._stopped else "the engine loop has failed")
                self.engine.add_request(request_id, prompt, params)
            except Exception as err:  # noqa: BLE001 - the caller's generate() raises it
                _post(loop, _settle, added, err)
                continue
            self._streams[request_id] = stream
            _post(loop, _settle, added, None)

    def _abort_now(self, request_id: str) -> bool:
        request = self.engine.requests.get(request_id)
        found = self.engine.abort(request_id)
        stream = self._streams.pop(request_id, None)
        if found and stream is not None:
            loop, deltas, tracker = stream
            _post(loop, deltas.put_nowait, request_output(request, time.time(), tracker))
        return found

    def _loop(self) -> None:
        while not self._stopped:
            self._wake.wait()
            with self._lock:
                self._take_inbox()
                if not self.engine.has_unfinished():
                    self._wake.clear()
                    if not self._inbox.empty():  # arrived between taking the inbox and clearing
                        self._wake.set()
                    continue
                try:
                    touched = self.engine.step()
                except BaseException as err:  # report to every waiting consumer, then stop
                    self._error = err
                    for loop, stream, _ in self._streams.values():
                        _post(loop, stream.put_nowait, err)
                    self._streams.clear()
                    self._take_inbox()  # waiting adds fail too
                    return
                now = time.time()
                deliveries: dict[asyncio.AbstractEventLoop, list] = {}
                for request in touched:
                    stream = self._streams.get(request.request_id)
                    if stream is None:
                        continue
                    loop, deltas, tracker = stream
                    out = request_output(request, now, tracker)
                    if out.finished:
                        del self._streams[request.request_id]
                    deliveries.setdefault(loop, []).append((deltas, out))
                # one wake-up of each event loop per step, not one per request (with a hundred streams
                # the per-call cost, a self-pipe write and a callback, took the GIL from this thread);
                # still under the lock, so an abort's final output cannot overtake this step's
                for loop, items in deliveries.items():
                    _post(loop, _deliver, items)


def _post(loop: asyncio.AbstractEventLoop, fn, *args) -> None:
    """loop.call_soon_threadsafe from the engine thread; a closed loop (its consumers are gone) is skipped
    rather than allowed to kill the engine thread."""
    try:
        loop.call_soon_threadsafe(fn, *args)
    except RuntimeError:
        pass


def _settle(future: asyncio.Future, error: BaseException | None) -> None:
    """Resolve an add's future on its event loop (unless its consumer already left)."""
    if future.cancelled():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)


def _deliver(items: list[tuple[asyncio.Queue, RequestOutput]]) -> None:
    """Hand one engine step's deltas to their streams (runs on the streams' event loop)."""
    for stream, out in items:
        stream.put_nowait(out)
