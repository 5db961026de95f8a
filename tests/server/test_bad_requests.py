"""Invalid requests get 400 with an OpenAI error body naming the parameter; a bounded fuzz of request
bodies finds no 500 and leaves the server healthy."""
from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from tests.server.conftest import MAX_MODEL_LEN, MODEL

C, CHAT = "/v1/completions", "/v1/chat/completions"
MSG = [{"role": "user", "content": "hi"}]
TOOLS = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]

CASES = [  # (endpoint, body, parameter the error must name)
    (C, {"model": "gpt-4", "prompt": "x"}, "model"),
    (C, {"model": MODEL}, "prompt"),
    (C, {"prompt": ""}, "prompt"),
    (C, {"prompt": []}, "prompt"),
    (C, {"prompt": [[]]}, "prompt"),
    (C, {"prompt": [10 ** 9]}, "prompt"),
    (C, {"prompt": [-1, 5]}, "prompt"),
    (C, {"prompt": "hello " * MAX_MODEL_LEN}, "prompt"),
    (C, {"prompt": "x", "max_tokens": -1}, "max_tokens"),
    (C, {"prompt": "x", "max_tokens": 0}, "max_tokens"),
    (C, {"prompt": "x", "max_tokens": "ten"}, "max_tokens"),
    (C, {"prompt": "x", "max_tokens": 1.5}, "max_tokens"),
    (C, {"prompt": "x", "max_tokens": MAX_MODEL_LEN}, "max_tokens"),
    (C, {"prompt": "x", "temperature": -0.5}, "temperature"),
    (C, {"prompt": "x", "temperature": "hot"}, "temperature"),
    (C, {"prompt": "x", "top_p": 0}, "top_p"),
    (C, {"prompt": "x", "top_p": 1.5}, "top_p"),
    (C, {"prompt": "x", "n": 0}, "n"),
    (C, {"prompt": "x", "stop": 5}, "stop"),
    (C, {"prompt": "x", "stop": [""]}, "stop"),
    (C, {"prompt": "x", "presence_penalty": 3}, "presence_penalty"),
    (C, {"prompt": "x", "frequency_penalty": -2.5}, "frequency_penalty"),
    (C, {"prompt": "x", "logprobs": 50}, "logprobs"),
    (C, {"prompt": "x", "seed": "abc"}, "seed"),
    (C, {"prompt": "x", "top_k": -5}, "top_k"),
    (C, {"prompt": "x", "min_p": 2}, "min_p"),
    (C, {"prompt": "x", "repetition_penalty": 0}, "repetition_penalty"),
    (C, {"prompt": "x", "min_tokens": 10, "max_tokens": 2}, "min_tokens"),
    (C, {"prompt": "x", "stream": "yes"}, "stream"),
    (C, {"prompt": "x", "stream": True, "stream_options": {"include_usage": "y"}}, "stream_options.include_usage"),
    (C, {"prompt": "x", "response_format": {"type": "xml"}}, "response_format.type"),
    (C, {"prompt": "x", "response_format": {"type": "json_schema"}}, "response_format.json_schema"),
    (C, {"prompt": "x", "response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "foo"}}}},
     "response_format.json_schema"),
    (C, {"prompt": "x", "structured_outputs": {"regex": "(["}}, "structured_outputs.regex"),
    (C, {"prompt": "x", "structured_outputs": {"choice": []}}, "structured_outputs.choice"),
    (C, {"prompt": "x", "structured_outputs": {"json": "{not json"}}, "structured_outputs.json"),
    (C, {"prompt": "x", "structured_outputs": {"grammar": "root ::= "}}, "structured_outputs.grammar"),
    (C, {"prompt": "x", "structured_outputs": {"choice": ["a"], "regex": "a"}}, "structured_outputs"),
    (C, {"prompt": "x", "response_format": {"type": "json_object"}, "structured_outputs": {"regex": "a"}},
     "structured_outputs"),
    (CHAT, {"model": MODEL}, "messages"),
    (CHAT, {"messages": []}, "messages"),
    (CHAT, {"messages": "hi"}, "messages"),
    (CHAT, {"messages": [{"role": "robot", "content": "hi"}]}, "messages.0.role"),
    (CHAT, {"messages": [{"role": "user", "content": 5}]}, "messages.0.content"),
    (CHAT, {"messages": MSG, "max_completion_tokens": -5}, "max_completion_tokens"),
    (CHAT, {"messages": MSG, "top_logprobs": 3}, "top_logprobs"),
    (CHAT, {"messages": MSG, "logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    (CHAT, {"messages": MSG, "tool_choice": "required"}, "tool_choice"),
    (CHAT, {"messages": MSG, "tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "g"}}},
     "tool_choice"),
    (CHAT, {"messages": MSG, "tool_choice": "sometimes"}, "tool_choice"),
    (CHAT, {"messages": MSG, "tools": [{"type": "function", "function": {"name": ""}}]}, "tools.0.function.name"),
    (CHAT, {"messages": MSG, "chat_template_kwargs": {"tokenize": True}}, "chat_template_kwargs"),
    (CHAT, {"messages": MSG, "chat_template_kwargs": "thinking"}, "chat_template_kwargs"),
    (CHAT, {"messages": [{"role": "user", "content": "hello " * MAX_MODEL_LEN}]}, "messages"),
    ("/tokenize", {"model": MODEL}, "prompt"),
    ("/tokenize", {"prompt": "x", "messages": MSG}, "prompt"),
    ("/detokenize", {"tokens": [-1]}, "tokens"),
    ("/detokenize", {"tokens": "abc"}, "tokens"),
]


@pytest.mark.both_engine_modes
@pytest.mark.parametrize("path,body,param", CASES, ids=[f"{p}-{param}-{i}" for i, (p, _, param) in enumerate(CASES)])
def test_invalid_request_names_the_parameter(http, path, body, param):
    response = http.post(path, json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["type"] and error["code"] == 400
    assert param.split(".")[0] in error["message"]


@pytest.mark.parametrize("raw", [b"", b"{", b"[1, 2]", b"null", b'"text"', b"\xff\xfe"])
def test_malformed_body(http, raw):
    response = http.post(C, content=raw, headers={"Content-Type": "application/json"})
    assert response.status_code == 400 and response.json()["error"]["param"] == "body"


JSON_LEAF = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.floats(-3, 3, allow_nan=False),
                      st.text(max_size=6))
JSON = st.recursive(JSON_LEAF, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(st.text(max_size=5), inner, max_size=3)),
                    max_leaves=6)
# token counts: small when valid (never null, which means "up to the context" and would take minutes)
SMALL = st.one_of(st.integers(-2, 3), st.text(max_size=3), st.floats(-3, 3, allow_nan=False), st.lists(JSON_LEAF))
MESSAGE = st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant", "tool", "x"]),
                                 "content": st.one_of(st.text(max_size=8), JSON)})
FIELDS = {
    "model": st.one_of(st.just(MODEL), JSON), "temperature": JSON, "top_p": JSON, "top_k": JSON, "min_p": JSON,
    "n": SMALL, "seed": JSON, "stop": JSON, "presence_penalty": JSON, "frequency_penalty": JSON,
    "repetition_penalty": JSON, "min_tokens": SMALL, "logprobs": JSON, "top_logprobs": JSON, "echo": JSON,
    "stream": st.one_of(st.booleans(), JSON), "stream_options": JSON, "ignore_eos": JSON,
    "stop_token_ids": JSON, "response_format": st.one_of(JSON, st.sampled_from(
        [{"type": "json_object"}, {"type": "json_schema", "json_schema": {"schema": {"type": "boolean"}}}])),
    "structured_outputs": st.one_of(JSON, st.sampled_from([{"choice": ["a", "b"]}, {"regex": "[ab]"}])),
    "tools": JSON, "tool_choice": JSON, "chat_template_kwargs": JSON, "max_completion_tokens": SMALL,
}


@st.composite
def request_bodies(draw):
    path = draw(st.sampled_from([C, CHAT]))
    body = draw(st.fixed_dictionaries({"max_tokens": SMALL}, optional=FIELDS))
    if path == C:
        body["prompt"] = draw(st.one_of(st.text(max_size=8), st.lists(st.integers(-1, 60000), max_size=4), JSON))
    else:
        body["messages"] = draw(st.one_of(st.lists(MESSAGE, min_size=1, max_size=2), JSON))
    return path, body


@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(request_bodies())
def test_fuzzed_bodies_never_get_a_500(http, case):
    path, body = case
    response = http.post(path, content=json.dumps(body), headers={"Content-Type": "application/json"})
    assert response.status_code in (200, 400), (body, response.status_code, response.text)
    if response.status_code == 400:
        assert response.json()["error"]["message"]
    elif "text/event-stream" in response.headers.get("content-type", ""):
        assert response.text.rstrip().endswith("data: [DONE]")
        assert '"error"' not in response.text, response.text
    else:
        assert response.json()["choices"]


@pytest.mark.both_engine_modes
def test_server_is_healthy_after_bad_input(http):
    assert http.get("/health").status_code == 200
    assert http.post(C, json={"prompt": "x", "max_tokens": 1}).status_code == 200
