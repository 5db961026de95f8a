"""AsyncLLM's in-process engine: a background thread steps the EngineCore while requests are pending and
hands each step's deltas to the streams' event loops. Also the helpers both engine hosts (this thread, or
the child process of engine_process.py) use to reach an event loop from another thread.

New requests and aborts reach the engine thread through an inbox that it empties before every step,
rather than by taking the step lock: a lock released and retaken at every step starved the waiting
threads (the last of 100 simultaneous requests was admitted 6 s late on an H100).
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import threading
import time

from flagstack.engine.outputs import RequestOutput, request_output


def engine_stats(core) -> dict[str, float]:
    """EngineCore.stats() plus the running and waiting request counts (read without the step lock: a snapshot)."""
    scheduler = core.scheduler
    return {**core.stats(),
            "num_requests_running": len({s.request.request_id for s in list(scheduler.running)}),
            "num_requests_waiting": len({s.request.request_id for s in list(scheduler.waiting)})}


def engine_info(core) -> dict:
    """What the front end needs to know of an engine (the same whichever process runs it)."""
    return {"tokenizer": core.tokenizer, "vocab_size": core.vocab_size, "eos_token_ids": list(core.eos_token_ids),
            "max_model_len": core.max_model_len, "num_kv_blocks": core.blocks.num_blocks,
            "device": str(core.device)}


class EngineThread:
    """Steps `core` in a daemon thread; `add`, `abort_nowait` and the stats calls are safe from any thread."""

    def __init__(self, core) -> None:
        self.core = core
        self.info = engine_info(core)
        self.error: BaseException | None = None
        self._lock = threading.Lock()  # held by the engine thread for a step; get_stats reads under it
        self._wake = threading.Event()
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()  # ("add", ...) and ("abort", ...) messages
        self._streams: dict[str, tuple] = {}  # request id -> (event loop, asyncio.Queue, DeltaTracker)
        self._stopped = False
        self._thread = threading.Thread(target=self._loop, name="flagstack-engine", daemon=True)
        self._thread.start()

    def add(self, request_id: str, prompt, params, loop: asyncio.AbstractEventLoop, deltas: asyncio.Queue,
            tracker, added: asyncio.Future) -> None:
        """Queue a request; `added` is resolved on `loop` (with add_request's error, if any)."""
        self._send(("add", request_id, prompt, params, (loop, deltas, tracker), added))
        self._answer_if_dead()

    def abort_nowait(self, request_id: str) -> None:
        self._send(("abort", request_id, None))

    def abort(self, request_id: str) -> bool:
        """Stop a request and free its KV blocks, waiting for the engine thread (at most a step)."""
        if self._stopped or self.error is not None or threading.current_thread() is self._thread:
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
            return engine_stats(self.core)

    def live_stats(self) -> concurrent.futures.Future:
        """A snapshot read now, without waiting for the running step (for /metrics)."""
        done: concurrent.futures.Future = concurrent.futures.Future()
        done.set_result(engine_stats(self.core))
        return done

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
                if self._stopped or self.error is not None:
                    raise RuntimeError("the engine is shut down" if self._stopped else "the engine loop has failed")
                self.core.add_request(request_id, prompt, params)
            except Exception as err:  # noqa: BLE001 - the caller's generate() raises it
                post(loop, settle, added, err)
                continue
            self._streams[request_id] = stream
            post(loop, settle, added, None)

    def _abort_now(self, request_id: str) -> bool:
        request = self.core.requests.get(request_id)
        found = self.core.abort(request_id)
        stream = self._streams.pop(request_id, None)
        if found and stream is not None:
            loop, deltas, tracker = stream
            post(loop, deltas.put_nowait, request_output(request, time.time(), tracker))
        return found

    def _loop(self) -> None:
        core = self.core
        while not self._stopped:
            self._wake.wait()
            with self._lock:
                self._take_inbox()
                if not core.has_unfinished():
                    self._wake.clear()
                    if not self._inbox.empty():  # arrived between taking the inbox and clearing
                        self._wake.set()
                    continue
                try:
                    touched = core.step()
                except BaseException as err:  # report to every waiting consumer, then stop
                    self.error = err
                    for loop, deltas, _ in self._streams.values():
                        post(loop, deltas.put_nowait, err)
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
                    post(loop, deliver, items)


def post(loop: asyncio.AbstractEventLoop, fn, *args) -> None:
    """loop.call_soon_threadsafe from an engine thread; a closed loop (its consumers are gone) is skipped
    rather than allowed to kill that thread."""
    try:
        loop.call_soon_threadsafe(fn, *args)
    except RuntimeError:
        pass


def settle(future: asyncio.Future, error: BaseException | None) -> None:
    """Resolve an add's future on its event loop (unless its consumer already left)."""
    if future.cancelled():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)


def deliver(items: list[tuple[asyncio.Queue, RequestOutput | BaseException]]) -> None:
    """Hand one engine step's deltas to their streams (runs on the streams' event loop)."""
    for deltas, out in items:
        deltas.put_nowait(out)
