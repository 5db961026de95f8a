"""Chat specifics: messages -> prompt through the model's chat template, and the generated text split
into reasoning (Qwen3 `<think>...</think>`), answer and tool calls (Qwen3 / Hermes `<tool_call>` blocks
holding {"name", "arguments"} JSON).

`split_output(text, final=False)` is prefix-stable: while generation runs, a possibly unfinished tag
at the end is held back, so each part only grows and streaming sends the new characters of each part.
"""
from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field

from flagstack.engine.server.protocol import ApiError, ChatCompletionRequest, ChatMessage

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
TOOL_OPEN, TOOL_CLOSE = "<tool_call>", "</tool_call>"
# keys the server passes to apply_chat_template itself
_RESERVED_TEMPLATE_KWARGS = {"conversation", "messages", "tools", "tokenize", "add_generation_prompt",
                             "return_dict", "return_tensors", "padding", "truncation", "chat_template",
                             "continue_final_message", "documents", "tokenizer_kwargs", "return_assistant_tokens_mask"}


def message_dict(message: ChatMessage) -> dict:
    """A message as chat templates expect it: text content, tool-call arguments as dicts when JSON."""
    content = message.content
    if isinstance(content, list):
        content = "".join(part.text for part in content)
    out: dict = {"role": message.role, "content": content or ""}
    if message.name is not None:
        out["name"] = message.name
    if message.tool_call_id is not None:
        out["tool_call_id"] = message.tool_call_id
    if message.tool_calls:
        calls = []
        for call in message.tool_calls:
            arguments = call.function.arguments
            if isinstance(arguments, str):
                try:
                    arguments = json.loads(arguments)
                except json.JSONDecodeError:
                    pass
            calls.append({"id": call.id, "type": "function",
                          "function": {"name": call.function.name, "arguments": arguments}})
        out["tool_calls"] = calls
    return out


def render_chat(tokenizer, req: ChatCompletionRequest) -> str:
    """The prompt text of a chat request (tools included unless tool_choice is 'none')."""
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise ApiError("messages: this model has no chat template; use /v1/completions", "messages")
    kwargs = dict(req.chat_template_kwargs or {})
    clash = sorted(set(kwargs) & _RESERVED_TEMPLATE_KWARGS)
    if clash:
        raise ApiError(f"chat_template_kwargs: these keys are set by the server: {', '.join(clash)}",
                       "chat_template_kwargs")
    tools = None
    if req.tools and req.tool_choice != "none":
        tools = [tool.model_dump(exclude_none=True) for tool in req.tools]
    try:
        return tokenizer.apply_chat_template([message_dict(m) for m in req.messages], tools=tools, tokenize=False,
                                             add_generation_prompt=req.add_generation_prompt, **kwargs)
    except Exception as err:  # noqa: BLE001 - a template raising on these messages is a bad request
        raise ApiError(f"messages: the chat template rejected them: {err}", "messages") from None


def forced_tool_schema(req: ChatCompletionRequest) -> tuple[dict, str | None] | None:
    """For tool_choice 'required' or a named function: the JSON schema the output must follow and
    the forced function's name (None for 'required', whose output names the function)."""
    choice = req.tool_choice
    if choice is None or isinstance(choice, str) and choice in ("none", "auto"):
        return None
    tools = {t.function.name: t.function for t in req.tools or []}
    if not tools:
        raise ApiError("tool_choice: needs a non-empty 'tools' list", "tool_choice")
    if choice == "required":
        return {"anyOf": [{"type": "object", "properties": {"name": {"const": name},
                                                            "arguments": fn.parameters or {"type": "object"}},
                           "required": ["name", "arguments"]} for name, fn in tools.items()]}, None
    name = choice.function.name
    if name not in tools:
        raise ApiError(f"tool_choice: no tool named '{name}' in 'tools'", "tool_choice")
    return tools[name].parameters or {"type": "object"}, name


def new_tool_call(name: str, arguments: object) -> dict:
    arguments = arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)
    return {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
            "function": {"name": name, "arguments": arguments}}


@dataclass
class SplitOutput:
    reasoning: str = ""
    content: str = ""
    tool_calls: list[dict] = field(default_factory=list)


def _held_back(text: str, tags: tuple[str, ...]) -> int:
    """Length of the longest end of text that could be the start of one of the tags."""
    for n in range(min(len(text), max(map(len, tags)) - 1), 0, -1):
        if any(tag.startswith(text[-n:]) for tag in tags):
            return n
    return 0


class OutputSplitter:
    """Splits one choice's text into reasoning, content and tool calls (see the module docstring)."""

    def __init__(self, reasoning_open: bool, parse_tools: bool) -> None:
        self.reasoning_open = reasoning_open  # the prompt opened <think>: output starts in the reasoning
        self.parse_tools = parse_tools
        self._ids: list[str] = []  # tool call ids stay the same between calls

    def split(self, text: str, final: bool) -> SplitOutput:
        out = SplitOutput()
        stripped = text.lstrip()
        if self.reasoning_open or stripped.startswith(THINK_OPEN):
            body = stripped[len(THINK_OPEN):] if stripped.startswith(THINK_OPEN) else text
            end = body.find(THINK_CLOSE)
            if end < 0:
                out.reasoning = body if final else body[:len(body) - _held_back(body, (THINK_CLOSE,))]
                return out
            out.reasoning, text = body[:end], body[end + len(THINK_CLOSE):].lstrip("\n")
        elif not final and THINK_OPEN.startswith(stripped):
            return out  # might still become "<think>"
        if not self.parse_tools:
            out.content = text
            return out
        pos = 0
        while True:
            start = text.find(TOOL_OPEN, pos)
            if start < 0:
                rest = text[pos:]
                out.content += rest if final else rest[:len(rest) - _held_back(rest, (TOOL_OPEN,))]
                break
            out.content += text[pos:start]
            end = text.find(TOOL_CLOSE, start)
            if end < 0:
                if final:
                    out.content += text[start:]
                break
            call = self._parse_call(text[start + len(TOOL_OPEN):end], len(out.tool_calls))
            if call is None:
                out.content += text[start:end + len(TOOL_CLOSE)]
            else:
                out.tool_calls.append(call)
            pos = end + len(TOOL_CLOSE)
        return out

    def _parse_call(self, block: str, index: int) -> dict | None:
        try:
            data = json.loads(block)
        except json.JSONDecodeError:
            return None
        if not isinstance(data, dict) or not isinstance(data.get("name"), str):
            return None
        call = new_tool_call(data["name"], data.get("arguments", data.get("parameters", {})))
        if index < len(self._ids):
            call["id"] = self._ids[index]
        else:
            self._ids.append(call["id"])
        return call


def prompt_opens_reasoning(prompt_text: str) -> bool:
    """True when the chat template ended the prompt inside an open <think> block."""
    return prompt_text.rstrip().endswith(THINK_OPEN)
