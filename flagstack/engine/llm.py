"""User entry points: `LLM` (offline batches, vLLM-like) and `AsyncLLM` (asyncio streaming, for the
HTTP server). Both drive one EngineCore."""
from __future__ import annotations

import asyncio
import itertools
import time
from typing import AsyncIterator, Sequence as Seq

import torch

from flagstack.engine.config import EngineConfig, SamplingParams
from flagstack.engine.core import EngineCore
from flagstack.engine.engine_thread import EngineThread
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
    """Streaming engine: `async for out in engine.generate(prompt, params, request_id)` yields deltas.

    The EngineCore runs in a background thread of this process (engine_process=False; the CPU default)
    or in a child process (True; the CUDA default), where its per-step Python work does not share the
    GIL with the event loops that consume the streams. Either way the text of the deltas is decoded here,
    on the consumer's event loop, and `engine` is the EngineCore in thread mode (None in process mode)."""

    def __init__(self, model: str | None = None, engine_process: bool | None = None, **engine_kwargs) -> None:
        if engine_process is None:
            engine_process = default_engine_process(engine_kwargs)
        self.engine_process = bool(engine_process)
        if self.engine_process:
            from flagstack.engine.engine_process import EngineProcess

            EngineConfig(**engine_kwargs)  # a bad setting raises here, before a process starts
            self._host = EngineProcess(model, engine_kwargs)
            self.engine: EngineCore | None = None
        else:
            self.engine = build_engine(model, **engine_kwargs)
            self._host = EngineThread(self.engine)
        info = self._host.info
        self.tokenizer = info["tokenizer"]
        self.vocab_size: int = info["vocab_size"]
        self.eos_token_ids: list[int] = info["eos_token_ids"]
        self.max_model_len: int = info["max_model_len"]
        self.num_kv_blocks: int = info["num_kv_blocks"]
        self.device: str = info["device"]

    @property
    def error(self) -> BaseException | None:
        """Why the engine stopped working (None while it works)."""
        return self._host.error

    async def generate(self, prompt: Prompt, params: SamplingParams | None = None,
                       request_id: str | None = None) -> AsyncIterator[RequestOutput]:
        """Yield RequestOutputs holding the new text/tokens since the previous one; the last has finished=True.
        A bad request raises ValueError at the first iteration."""
        if self.error is not None:
            raise RuntimeError("the engine loop has failed") from self.error
        request_id = request_id or f"async-{id(object())}-{time.monotonic_ns()}"
        params = params or SamplingParams()
        deltas: asyncio.Queue = asyncio.Queue()
        loop = asyncio.get_running_loop()
        # the text is decoded here, on the event loop, unless the engine keeps it for stop strings
        tracker = DeltaTracker(None if params.stop_strings else self.tokenizer, params.skip_special_tokens)
        added = loop.create_future()
        self._host.add(request_id, prompt, params, loop, deltas, tracker, added)
        try:
            await added  # the engine's add_request: raises its ValueError for a bad request
        except asyncio.CancelledError:  # the consumer left while the add was in flight: undo it
            self._host.abort_nowait(request_id)
            raise
        finished = False
        try:
            while True:
                items = [await deltas.get()]
                while not deltas.empty():  # fell behind the engine: one merged delta for all of them
                    items.append(deltas.get_nowait())
                failure = next((i for i in items if isinstance(i, BaseException)), None)
                if failure is not None:
                    finished = True  # nothing left to abort
                    raise RuntimeError("the engine loop has failed") from failure
                item = tracker.add_text(merge_deltas(items))
                yield item
                if item.finished:
                    finished = True
                    return
        finally:
            if not finished:  # the consumer stopped early: free its blocks
                self._host.abort_nowait(request_id)

    def abort(self, request_id: str) -> bool:
        """Stop a request and free its KV blocks; its stream ends with finish_reason 'abort'. Waits for the
        engine (at most a step); False if the request is unknown or already done."""
        return self._host.abort(request_id)

    def get_stats(self) -> dict[str, float]:
        """Engine stats between two steps: prefix-cache hit rate, KV usage, running / waiting requests..."""
        return self._host.get_stats()

    async def live_stats(self) -> dict[str, float]:
        """The same, without holding up the engine (thread mode: a snapshot read during the step)."""
        return await asyncio.wrap_future(self._host.live_stats())

    def shutdown(self) -> None:
        """Stop the engine (pending requests are left unfinished)."""
        self._host.shutdown()


def default_engine_process(engine_kwargs: dict) -> bool:
    """The engine gets its own process on CUDA (there the GIL it shared with the server's event loop held
    back its launches), not on CPU (its steps are long, and spawning re-imports torch and reloads the model)."""
    device = engine_kwargs.get("device") or ("cuda" if torch.cuda.is_available() else "cpu")
    return str(device).startswith("cuda")
