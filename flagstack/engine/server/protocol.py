"""Request bodies of the OpenAI-compatible API (pydantic, strict types) and the OpenAI error body.

Bodies are validated from the raw JSON (`parse_body`), so a wrong type, a value out of range or a
malformed body becomes an ApiError naming the parameter (HTTP 400), never a 500. Unknown fields are
ignored, as OpenAI clients send fields a server may not use.
"""
from __future__ import annotations

from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class ApiError(Exception):
    """An error answered with an OpenAI-style body: {"error": {message, type, param, code}}."""

    def __init__(self, message: str, param: str | None = None, status: int = 400,
                 kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.message, self.param, self.status, self.kind = message, param, status, kind

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.status}}


class Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class StreamOptions(Strict):
    include_usage: bool = False


class JsonSchemaSpec(Strict):
    name: str = "response"
    schema_: dict | bool = Field(alias="schema", default=True)
    strict: bool | None = None
    description: str | None = None


class ResponseFormat(Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaSpec | None = None


class StructuredOutputsSpec(Strict):
    """vLLM's `structured_outputs`: exactly one of these."""

    json_: dict | str | bool | None = Field(alias="json", default=None)
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None
    json_object: bool | None = None


class SamplingFields(Strict):
    """Parameters shared by /v1/completions and /v1/chat/completions (vLLM's extras included)."""

    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=100.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    n: int = Field(default=1, ge=1, le=64)
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=-(2 ** 63), lt=2 ** 63)
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    stream: bool = False
    stream_options: StreamOptions | None = None
    top_k: int | None = Field(default=None, ge=-1)
    min_p: float | None = Field(default=None, ge=0.0, le=1.0)
    repetition_penalty: float | None = Field(default=None, gt=0.0, le=100.0)
    min_tokens: int = Field(default=0, ge=0)
    ignore_eos: bool = False
    stop_token_ids: list[int] | None = None
    skip_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    response_format: ResponseFormat | None = None
    structured_outputs: StructuredOutputsSpec | None = None
    user: str | None = None


class CompletionRequest(SamplingFields):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(default=16, ge=1)  # OpenAI's legacy default
    echo: bool = False
    logprobs: int | None = Field(default=None, ge=0, le=20)


class FunctionSpec(Strict):
    name: str = Field(min_length=1)
    description: str | None = None
    parameters: dict | None = None


class Tool(Strict):
    type: Literal["function"] = "function"
    function: FunctionSpec


class NamedFunction(Strict):
    name: str


class NamedToolChoice(Strict):
    type: Literal["function"] = "function"
    function: NamedFunction


class ToolCallFunction(Strict):
    name: str
    arguments: str | dict


class ToolCall(Strict):
    id: str | None = None
    type: Literal["function"] = "function"
    function: ToolCallFunction


class ContentPart(Strict):
    type: Literal["text"]
    text: str


class ChatMessage(Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    reasoning_content: str | None = None


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    add_generation_prompt: bool = True


class TokenizeRequest(Strict):
    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: bool = True
    add_generation_prompt: bool = True
    chat_template_kwargs: dict[str, Any] | None = None


class DetokenizeRequest(Strict):
    model: str | None = None
    tokens: list[int]


Body = TypeVar("Body", bound=BaseModel)
_TYPE_NAMES = {"str", "int", "bool", "float", "dict", "list", "none"}


def parse_body(model: type[Body], raw: bytes) -> Body:
    """Validate a JSON body; ApiError naming the first offending parameter otherwise."""
    try:
        return model.model_validate_json(raw or b"")
    except ValidationError as err:
        first = err.errors(include_url=False)[0]
        if first["type"] == "json_invalid" or not first["loc"]:
            raise ApiError(f"the request body must be a JSON object: {first['msg']}", "body") from None
        # a union's error location also names the member type tried ('str', 'list[int]', 'Tool'): drop those
        loc = [str(p) for p in first["loc"]
               if not (str(p)[0].isupper() or "[" in str(p) or "-" in str(p) or str(p) in _TYPE_NAMES)]
        param = ".".join(loc) or None
        raise ApiError(f"{param or 'body'}: {first['msg']}", param) from None
