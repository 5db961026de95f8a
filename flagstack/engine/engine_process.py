"""AsyncLLM's engine in a child process (as vLLM V1 runs its EngineCore): the child builds the engine and
steps it with an interpreter, and a GIL, of its own; this process keeps the tokenizer, the text decoding
of deltas and the asyncio side. With the engine in a thread of the server, its per-step Python work
(schedule, prepare inputs, launch) waited for the GIL while the event loop wrote a hundred event streams.

Wire: two one-way pipes of pickled tuples.
  parent -> child  ("add", request_id, prompt, params)   ("abort", request_id, ticket | None)
                   ("stats", ticket)                     ("shutdown",)
  child -> parent  ("ready", info)   ("added", request_id, error | None)   ("step", [delta, ...])
                   ("aborted", ticket, found, delta | None)   ("stats", ticket, stats)   ("failed", error)
One "step" message per engine step holds a delta of every request that got new tokens, read straight off
the engine's Request (no output objects in the child, whose time between steps is the GPU's idle time):
  delta = (request_id, finished, [sample, ...], meta | None)
  sample = (text, new token ids, cumulative_logprob, new logprobs | None[, finish_reason, stop_reason])
           one per sequence, in index order; the last two only once it has finished; text is "" unless
           the engine keeps it (stop strings): the parent decodes the tokens
  meta = (first_token_time, finished_time, num_cached_tokens, head | None): in the first delta, the
         finished one, and when the prefix-cache count changed (re-admitted after a preemption)
  head = (prompt, prompt_token_ids, prompt_logprobs, arrival_time): in the first delta only
The parent (ParentStream) turns each delta back into the RequestOutput the thread mode gives.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import multiprocessing
import os
import pickle
import queue
import signal
import threading
import time
import traceback

from flagstack.engine.engine_thread import deliver, engine_info, engine_stats, post, settle
from flagstack.engine.outputs import CompletionOutput, RequestMetrics, RequestOutput
from flagstack.engine.sequence import Request, Status

PARENT_CHECK_S = 1.0  # how often the child looks whether its parent still exists
SHUTDOWN_WAIT_S = 30.0
FINISHED = Status.FINISHED  # read once: an enum member lookup per sequence per step cost 20% of delta()


def dumps(message: tuple) -> bytes:
    return pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)


# -- child side --------------------------------------------------------------------------------------------
def child_main(model: str | None, engine_kwargs: dict, inbox, outbox, parent_pid: int) -> None:
    """The engine process: build the engine, then serve the parent's messages until shutdown or its exit."""
    # Ctrl-C in a terminal reaches the whole process group; the server drains, then shuts this process down.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=exit_when_orphaned, args=(parent_pid,), daemon=True).start()
    from flagstack.engine.llm import build_engine

    try:
        core = build_engine(model, **engine_kwargs)
        outbox.send_bytes(dumps(("ready", engine_info(core))))
    except BaseException as err:  # noqa: BLE001 - the parent raises it
        outbox.send_bytes(dumps(("failed", portable_error(err))))
        return
    # Stepped from a second thread, as in thread mode: on a busy CPU, torch's OpenMP workers spin-waiting
    # in the main thread made the same steps several times slower (measured on 2 loaded cores).
    loop = threading.Thread(target=ChildLoop(core, inbox, outbox).run, name="flagstack-engine")
    loop.start()
    loop.join()


def exit_when_orphaned(parent_pid: int) -> None:
    """Exit when the parent has died, even in the middle of a long step (the pipe is read only between steps)."""
    while True:
        time.sleep(PARENT_CHECK_S)
        if os.getppid() != parent_pid:
            os._exit(1)


def portable_error(err: BaseException) -> Exception:
    """The error as the parent can surely unpickle it; a ValueError stays one (the server answers 400)."""
    if isinstance(err, ValueError):
        return ValueError(str(err))
    tail = "".join(traceback.format_exception(err)[-4:])
    return RuntimeError(f"{type(err).__name__}: {err}\n{tail}")


class ChildLoop:
    """Between engine steps: apply every queued message; step while requests are unfinished."""

    def __init__(self, core, inbox, outbox) -> None:
        self.core, self.inbox, self.outbox = core, inbox, outbox
        self.sent: dict[str, Sent] = {}  # what each unfinished request's stream has been sent
        self.structured = None  # StructuredOutputs, built at the first grammar

    def run(self) -> None:
        try:
            self.serve()
        except (EOFError, BrokenPipeError, ConnectionResetError):  # the parent is gone
            pass

    def serve(self) -> None:
        core = self.core
        while True:
            if not core.has_unfinished():
                self.inbox.poll(None)  # idle: sleep until a message (or the parent's exit) comes
            while self.inbox.poll(0):
                if not self.handle(pickle.loads(self.inbox.recv_bytes())):
                    return
            if not core.has_unfinished():
                continue
            try:
                touched = core.step()
            except BaseException as err:  # noqa: BLE001 - every waiting stream hears of it
                self.send(("failed", portable_error(err)))
                return
            if not touched:
                continue
            now, sent = time.time(), self.sent
            deltas = [delta(request, sent[request.request_id], now) for request in touched]
            for d in deltas:
                if d[1]:  # finished
                    del sent[d[0]]
            self.send(("step", deltas))

    def handle(self, message: tuple) -> bool:
        """Apply one parent message; False for shutdown."""
        kind = message[0]
        if kind == "add":
            _, request_id, prompt, params = message
            try:
                self.bind_grammar(params)
                self.core.add_request(request_id, prompt, params)
            except Exception as err:  # noqa: BLE001 - answered to the caller's generate()
                self.send(("added", request_id, portable_error(err)))
                return True
            # the text is decoded in the parent unless the engine keeps it for stop strings (as in thread mode)
            self.sent[request_id] = Sent(params.n, bool(params.stop_strings))
            self.send(("added", request_id, None))
        elif kind == "abort":
            _, request_id, ticket = message
            request = self.core.requests.get(request_id)
            found = self.core.abort(request_id)
            sent = self.sent.pop(request_id, None)
            final = delta(request, sent, time.time()) if found and sent is not None else None
            self.send(("aborted", ticket, found, final))
        elif kind == "stats":
            self.send(("stats", message[1], engine_stats(self.core)))
        elif kind == "shutdown":
            return False
        return True

    def bind_grammar(self, params) -> None:
        """A grammar travels as its (kind, spec) (xgrammar's compiled form does not pickle): compile it here."""
        factory = params.constraint_factory
        if getattr(factory, "needs_compile", False):
            if self.structured is None:
                from flagstack.engine.structured import StructuredOutputs

                core = self.core
                self.structured = StructuredOutputs(core.tokenizer, core.vocab_size, core.eos_token_ids)
            factory.compile_with(self.structured)

    def send(self, message: tuple) -> None:
        self.outbox.send_bytes(dumps(message))


class Sent:
    """What the child has sent of one request: output tokens and (if the engine keeps the text) characters
    of each sequence, and the prefix-cache count of its last metrics (None: nothing sent yet)."""

    __slots__ = ("tokens", "chars", "cached")

    def __init__(self, n: int, keeps_text: bool) -> None:
        self.tokens = [0] * n
        self.chars = [0] * n if keeps_text else None
        self.cached: int | None = None


def delta(request: Request, sent: Sent, now: float) -> tuple:
    """The request's news since `sent` as a wire delta (see the module docstring), and `sent` updated."""
    samples = []
    finished = True
    tokens, chars = sent.tokens, sent.chars
    for i, seq in enumerate(request.sequences):
        before = tokens[i]
        new_ids = seq.token_ids[seq.num_prompt_tokens + before:]  # only the new tokens: no copy of the output
        tokens[i] = before + len(new_ids)
        logprobs = seq.logprobs
        if logprobs is not None:
            logprobs = logprobs[before:]
        text = ""
        if chars is not None:
            text = seq.text[chars[i]:]
            chars[i] = len(seq.text)
        if seq.status is FINISHED:
            samples.append((text, new_ids, seq.cumulative_logprob, logprobs, seq.finish_reason, seq.stop_reason))
        else:
            finished = False
            samples.append((text, new_ids, seq.cumulative_logprob, logprobs))
    meta = None
    cached = request.sequences[0].num_cached_tokens
    if finished or cached != sent.cached:  # always true for the first delta (sent.cached is None)
        head = None
        if sent.cached is None:
            head = (request.prompt, request.prompt_token_ids, request.prompt_logprobs, request.arrival)
        # first_token_time needs no resend: the engine sets it in the step that makes the first delta
        meta = (request.first_token_time, now if finished else None, cached, head)
        sent.cached = cached
    return (request.request_id, finished, samples, meta)


# -- parent side -------------------------------------------------------------------------------------------
class ParentStream:
    """A request's stream as the parent sees it: where its deltas go, and its prompt part once received."""

    __slots__ = ("loop", "deltas", "added", "head", "first_token_time", "cached")

    def __init__(self, loop: asyncio.AbstractEventLoop, deltas: asyncio.Queue, added: asyncio.Future) -> None:
        self.loop, self.deltas, self.added = loop, deltas, added
        self.head = self.first_token_time = self.cached = None

    def output(self, request_id: str, finished: bool, samples: list, meta: tuple | None) -> RequestOutput:
        """A wire delta as the RequestOutput it stands for (the prompt part and metrics from earlier deltas)."""
        finished_time = None
        if meta is not None:
            self.first_token_time, finished_time, self.cached, head = meta
            if head is not None:
                self.head = head
        prompt, prompt_ids, prompt_logprobs, arrival = self.head
        return RequestOutput(request_id, prompt, prompt_ids, prompt_logprobs,
                             [CompletionOutput(i, *sample) for i, sample in enumerate(samples)], finished,
                             RequestMetrics(arrival, self.first_token_time, finished_time, self.cached))


class EngineProcess:
    """Spawns the engine process and talks to it: a sender thread writes requests (the event loop never
    blocks on a full pipe), a reader thread hands each step's outputs to their event loops, one callback
    per loop per step. Same interface as EngineThread."""

    def __init__(self, model: str | None, engine_kwargs: dict) -> None:
        ctx = multiprocessing.get_context("spawn")
        child_inbox, self._to_child = ctx.Pipe(duplex=False)  # (read end, write end)
        self._from_child, child_outbox = ctx.Pipe(duplex=False)
        self.process = ctx.Process(target=child_main, name="flagstack-engine-core", daemon=True,
                                   args=(model, engine_kwargs, child_inbox, child_outbox, os.getpid()))
        self.process.start()
        # the child now holds the only copies of its ends: once it exits, reads here see end-of-file and
        # writes fail, instead of waiting forever
        child_inbox.close()
        child_outbox.close()
        self.info = self._wait_ready()
        self.error: BaseException | None = None
        self._closing = False
        self._lock = threading.Lock()  # guards _streams, _pending and error between the threads
        self._streams: dict[str, ParentStream] = {}
        self._pending: dict[int, tuple[concurrent.futures.Future, object]] = {}  # ticket -> (future, on failure)
        self._tickets = itertools.count()
        self._outgoing: queue.SimpleQueue = queue.SimpleQueue()
        self._sender = threading.Thread(target=self._send_loop, name="flagstack-engine-send", daemon=True)
        self._reader = threading.Thread(target=self._read_loop, name="flagstack-engine-read", daemon=True)
        self._sender.start()
        self._reader.start()

    def _wait_ready(self) -> dict:
        while True:
            try:
                if self._from_child.poll(1.0):
                    kind, payload = pickle.loads(self._from_child.recv_bytes())
                    if kind == "ready":
                        return payload
                    self.process.join(SHUTDOWN_WAIT_S)
                    raise payload  # the child's build_engine error
            except EOFError:
                pass
            if not self.process.is_alive():
                self.process.join()
                raise RuntimeError(f"the engine process exited (code {self.process.exitcode}) before it was ready; "
                                   f"its error output says why (a script that starts one needs "
                                   f"`if __name__ == '__main__':`, as multiprocessing's spawn re-imports it)")

    # -- calls (any thread) ------------------------------------------------------------------------------
    def add(self, request_id: str, prompt, params, loop: asyncio.AbstractEventLoop, deltas: asyncio.Queue,
            tracker, added: asyncio.Future) -> None:
        """Send a request; `added` is resolved on `loop` with the child's add_request error, if any."""
        try:
            payload = dumps(("add", request_id, prompt, params))
        except Exception as err:  # noqa: BLE001 - e.g. a constraint_factory that is a lambda
            raise ValueError(f"params: cannot be sent to the engine process ({type(err).__name__}: {err}); "
                             f"a constraint_factory must pickle there") from None
        with self._lock:
            if self.error is not None:
                raise RuntimeError("the engine loop has failed") from self.error
            if request_id in self._streams:
                raise ValueError(f"request_id '{request_id}' is already running")
            self._streams[request_id] = ParentStream(loop, deltas, added)
        self._outgoing.put(payload)

    def abort_nowait(self, request_id: str) -> None:
        if self.error is None:
            self._outgoing.put(dumps(("abort", request_id, None)))

    def abort(self, request_id: str) -> bool:
        """Stop a request and free its KV blocks; waits for the child (at most a step)."""
        return self._ask(("abort", request_id), False).result()

    def get_stats(self) -> dict[str, float]:
        return self.live_stats().result()

    def live_stats(self) -> concurrent.futures.Future:
        """The child's stats, answered between two steps."""
        return self._ask(("stats",), RuntimeError("the engine process is not running"))

    def shutdown(self) -> None:
        """Stop the child (pending requests are left unfinished; their streams get an error)."""
        self._closing = True
        self._outgoing.put(dumps(("shutdown",)))
        self._outgoing.put(None)
        self.process.join(SHUTDOWN_WAIT_S)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self._reader.join(SHUTDOWN_WAIT_S)

    def _ask(self, message: tuple, on_failure: object) -> concurrent.futures.Future:
        """Send a message with a ticket; the future gets the child's answer, or `on_failure` if it is gone."""
        done: concurrent.futures.Future = concurrent.futures.Future()
        with self._lock:
            if self.error is not None:
                _resolve(done, on_failure)
                return done
            ticket = next(self._tickets)
            self._pending[ticket] = (done, on_failure)
        self._outgoing.put(dumps((*message, ticket)))
        return done

    # -- threads ----------------------------------------------------------------------------------------
    def _send_loop(self) -> None:
        while (payload := self._outgoing.get()) is not None:
            try:
                self._to_child.send_bytes(payload)
            except OSError:  # the child is gone; the reader reports it
                return

    def _read_loop(self) -> None:
        try:
            while True:
                message = pickle.loads(self._from_child.recv_bytes())
                kind = message[0]
                if kind == "step":
                    self._on_step(message[1])
                elif kind == "added":
                    self._on_added(message[1], message[2])
                elif kind == "aborted":
                    self._on_aborted(*message[1:])
                elif kind == "stats":
                    self._answer(message[1], message[2])
                elif kind == "failed":
                    self._fail(RuntimeError(f"the engine process failed: {message[1]}"))
                    return
        except (EOFError, OSError):
            self.process.join(5.0)
            self._fail(RuntimeError("the engine is shut down" if self._closing else
                                    f"the engine process exited (code {self.process.exitcode})"))

    def _on_step(self, outputs: list[tuple]) -> None:
        deliveries: dict[asyncio.AbstractEventLoop, list] = {}
        with self._lock:
            for request_id, finished, samples, meta in outputs:
                stream = self._streams.get(request_id)
                if stream is None:
                    continue
                if finished:
                    del self._streams[request_id]
                out = stream.output(request_id, finished, samples, meta)
                deliveries.setdefault(stream.loop, []).append((stream.deltas, out))
        for loop, items in deliveries.items():  # one wake-up per event loop per step
            post(loop, deliver, items)

    def _on_added(self, request_id: str, error: Exception | None) -> None:
        with self._lock:
            stream = self._streams.get(request_id) if error is None else self._streams.pop(request_id, None)
        if stream is not None:
            post(stream.loop, settle, stream.added, error)

    def _on_aborted(self, ticket: int | None, found: bool, out: tuple | None) -> None:
        if out is not None:
            with self._lock:
                stream = self._streams.pop(out[0], None)
            if stream is not None:
                post(stream.loop, deliver, [(stream.deltas, stream.output(*out))])
        if ticket is not None:
            self._answer(ticket, found)

    def _answer(self, ticket: int, value: object) -> None:
        with self._lock:
            done, _ = self._pending.pop(ticket, (None, None))
        if done is not None:
            done.set_result(value)

    def _fail(self, error: BaseException) -> None:
        """The child failed or exited: every waiting stream, add and question gets an answer."""
        with self._lock:
            self.error = self.error or error
            streams, self._streams = list(self._streams.values()), {}
            pending, self._pending = list(self._pending.values()), {}
        self._outgoing.put(None)
        for stream in streams:
            post(stream.loop, _fail_stream, stream, error)
        for done, on_failure in pending:
            _resolve(done, on_failure)


def _fail_stream(stream: ParentStream, error: BaseException) -> None:
    """On the stream's loop: a pending add raises the error; a running stream receives it."""
    if not stream.added.done():
        failed = RuntimeError("the engine loop has failed")
        failed.__cause__ = error
        stream.added.set_exception(failed)
        stream.added.exception()  # the consumer may be gone: no 'never retrieved' warning
    else:
        stream.deltas.put_nowait(error)


def _resolve(done: concurrent.futures.Future, value: object) -> None:
    if isinstance(value, BaseException):
        done.set_exception(value)
    else:
        done.set_result(value)
