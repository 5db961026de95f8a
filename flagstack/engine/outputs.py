"""What generation returns, with vLLM's shapes: a RequestOutput per prompt holding one
CompletionOutput per sample (n), cumulative or as deltas since the last report (streaming)."""
from __future__ import annotations

from dataclasses import dataclass

from flagstack.engine.sequence import IncrementalDetokenizer, Logprobs, Request, Sequence


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None
    logprobs: list[Logprobs] | None
    finish_reason: str | None = None  # "stop" | "length" | "abort" | None while running
    stop_reason: int | str | None = None  # the stop token id or stop string that ended it

    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class RequestMetrics:
    arrival_time: float
    first_token_time: float | None
    finished_time: float | None
    num_cached_tokens: int  # prompt tokens served by the prefix cache


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    prompt_logprobs: list[Logprobs | None] | None
    outputs: list[CompletionOutput]
    finished: bool
    metrics: RequestMetrics


class DeltaTracker:
    """What of each sequence a stream has already reported. The engine thread takes the new tokens
    (`completion`); their text is decoded on the consumer's side (`add_text`), off the engine's step,
    unless the engine keeps the text itself (stop strings need it there): pass no tokenizer then."""

    def __init__(self, tokenizer=None, skip_special_tokens: bool = True) -> None:
        self.tokens: dict[int, int] = {}
        self.chars: dict[int, int] = {}
        self.tokenizer, self.skip_special_tokens = tokenizer, skip_special_tokens
        self.ids: dict[int, list[int]] = {}  # consumer side, per sample index: output tokens so far
        self.detoks: dict[int, IncrementalDetokenizer] = {}
        self.emitted: dict[int, int] = {}  # consumer side: characters of text reported

    def completion(self, seq: Sequence) -> CompletionOutput:
        tokens = self.tokens.get(seq.seq_id, 0)
        new_ids = seq.token_ids[seq.num_prompt_tokens + tokens:]  # not a copy of the whole output every step
        self.tokens[seq.seq_id] = tokens + len(new_ids)
        text = ""
        if self.tokenizer is None:
            chars = self.chars.get(seq.seq_id, 0)
            self.chars[seq.seq_id] = len(seq.text)
            text = seq.text[chars:]
        return CompletionOutput(seq.index, text, new_ids, seq.cumulative_logprob,
                                None if seq.logprobs is None else seq.logprobs[tokens:],
                                seq.finish_reason, seq.stop_reason)

    def add_text(self, out: RequestOutput) -> RequestOutput:
        """Fill in the text of the new tokens (consumer side); the last delta completes the full decode."""
        if self.tokenizer is None:
            return out
        for c in out.outputs:
            ids = self.ids.setdefault(c.index, [])
            ids.extend(c.token_ids)
            emitted = self.emitted.get(c.index, 0)
            if c.finish_reason is not None:  # whatever the window held back (a cut UTF-8 character)
                c.text = self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)[emitted:]
            elif c.token_ids:
                detok = self.detoks.setdefault(c.index, IncrementalDetokenizer(0))
                c.text = detok.step(self.tokenizer, ids, self.skip_special_tokens)
            self.emitted[c.index] = emitted + len(c.text)
        return out


def completion(seq: Sequence) -> CompletionOutput:
    """Everything the sequence produced so far."""
    return CompletionOutput(seq.index, seq.text, seq.output_token_ids,
                            seq.cumulative_logprob if seq.num_output_tokens else None,
                            seq.logprobs, seq.finish_reason, seq.stop_reason)


def request_output(request: Request, now: float, tracker: DeltaTracker | None = None) -> RequestOutput:
    """The request's state as a RequestOutput: cumulative, or deltas when a tracker is given."""
    outs = [tracker.completion(s) if tracker else completion(s) for s in request.sequences]
    finished = request.finished
    return RequestOutput(
        request.request_id, request.prompt, request.prompt_token_ids, request.prompt_logprobs, outs, finished,
        RequestMetrics(request.arrival, request.first_token_time, now if finished else None,
                       request.sequences[0].num_cached_tokens))


def merge_deltas(deltas: list[RequestOutput]) -> RequestOutput:
    """One delta holding several consecutive deltas of a request, in order (a stream that fell behind
    sends one chunk for all of them instead of one per token)."""
    if len(deltas) == 1:
        return deltas[0]
    last = deltas[-1]
    outputs = []
    for parts in zip(*(d.outputs for d in deltas)):
        logprobs = None if parts[-1].logprobs is None else [lp for p in parts for lp in (p.logprobs or [])]
        outputs.append(CompletionOutput(parts[-1].index, "".join(p.text for p in parts),
                                        [t for p in parts for t in p.token_ids], parts[-1].cumulative_logprob,
                                        logprobs, parts[-1].finish_reason, parts[-1].stop_reason))
    return RequestOutput(last.request_id, last.prompt, last.prompt_token_ids, deltas[0].prompt_logprobs, outputs,
                         last.finished, last.metrics)
