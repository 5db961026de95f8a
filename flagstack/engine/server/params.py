"""Request fields -> what the engine takes: prompt token ids checked against the context, SamplingParams,
and the structured-output constraint (compiled once per request, off the event loop)."""
from __future__ import annotations

import asyncio
import re

from flagstack.engine.config import SamplingParams
from flagstack.engine.server.protocol import ApiError, SamplingFields

GREEDY_BELOW = 1e-5  # temperatures this small are greedy (dividing logits by them overflows)


def check_prompt(ids: list[int], vocab_size: int, max_model_len: int, max_tokens: int | None, param: str) -> None:
    """ApiError when the prompt is empty, has ids outside the vocabulary, or leaves no room to generate."""
    if not ids:
        raise ApiError(f"{param}: the prompt is empty", param)
    if min(ids) < 0 or max(ids) >= vocab_size:
        raise ApiError(f"{param}: token ids must be in [0, {vocab_size}), got {min(ids)}..{max(ids)}", param)
    if len(ids) >= max_model_len:
        raise ApiError(f"{param}: the prompt has {len(ids)} tokens; this model's maximum context length is "
                       f"{max_model_len} tokens, which leaves no room to generate", param)
    if max_tokens is not None and len(ids) + max_tokens > max_model_len:
        raise ApiError(f"max_tokens: {max_tokens} tokens requested on a prompt of {len(ids)} tokens; this model's "
                       f"maximum context length is {max_model_len} tokens", "max_tokens")


def sampling_params(req: SamplingFields, max_tokens: int | None, logprobs: int | None = None,
                    prompt_logprobs: int | None = None, constraint_factory=None) -> SamplingParams:
    """SamplingParams of a request; the engine's own checks become ApiErrors naming the field."""
    temperature = 1.0 if req.temperature is None else req.temperature
    stop = req.stop
    if isinstance(stop, list) and len(stop) > 16:
        raise ApiError("stop: at most 16 stop strings", "stop")
    try:
        return SamplingParams(
            n=req.n, temperature=0.0 if temperature < GREEDY_BELOW else temperature,
            top_p=1.0 if req.top_p is None else req.top_p, top_k=req.top_k or 0,
            min_p=req.min_p or 0.0, repetition_penalty=req.repetition_penalty or 1.0,
            presence_penalty=req.presence_penalty, frequency_penalty=req.frequency_penalty, seed=req.seed,
            max_tokens=max_tokens, min_tokens=req.min_tokens, stop=stop or None,
            stop_token_ids=req.stop_token_ids, include_stop_str_in_output=req.include_stop_str_in_output,
            ignore_eos=req.ignore_eos, logprobs=logprobs, prompt_logprobs=prompt_logprobs,
            skip_special_tokens=req.skip_special_tokens, constraint_factory=constraint_factory)
    except ValueError as err:
        message = str(err)
        field = re.match(r"\w+", message)
        raise ApiError(message, field.group(0) if field else None) from None


def structured_spec(req: SamplingFields) -> tuple[str, object, str] | None:
    """The one structured-output constraint a request asks for: (xgrammar kind, spec, parameter name)."""
    found = []
    fmt = req.response_format
    if fmt is not None and fmt.type == "json_object":
        found.append(("json_object", None, "response_format"))
    elif fmt is not None and fmt.type == "json_schema":
        if fmt.json_schema is None:
            raise ApiError("response_format.json_schema: required when type is 'json_schema'",
                           "response_format.json_schema")
        found.append(("json", fmt.json_schema.schema_, "response_format.json_schema"))
    so = req.structured_outputs
    if so is not None:
        if so.json_ is not None:
            found.append(("json", so.json_, "structured_outputs.json"))
        if so.regex is not None:
            found.append(("regex", so.regex, "structured_outputs.regex"))
        if so.choice is not None:
            found.append(("choice", so.choice, "structured_outputs.choice"))
        if so.grammar is not None:
            found.append(("grammar", so.grammar, "structured_outputs.grammar"))
        if so.json_object:
            found.append(("json_object", None, "structured_outputs.json_object"))
    if len(found) > 1:
        raise ApiError(f"structured_outputs: ask for one constraint, got {', '.join(p for _, _, p in found)}",
                       "structured_outputs")
    return found[0] if found else None


async def constraint_factory(structured, kind: str, spec: object, param: str):
    """Compile the grammar in a worker thread (the event loop keeps serving) -> a per-sequence factory
    (which an engine process compiles again: the compiled form does not pickle)."""
    if structured is None:
        raise ApiError(f"{param}: structured output needs the model's tokenizer", param)
    try:
        return await asyncio.to_thread(structured.compile_factory, kind, spec)
    except ValueError as err:
        raise ApiError(f"{param}: {err}", param) from None
