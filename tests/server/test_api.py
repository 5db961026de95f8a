"""The server through the official `openai` client: completions, chat, streaming with usage, n > 1,
logprobs, stop strings, every structured-output kind, forced tool calls, tokenize, metrics, api key.

Outputs are checked against what must hold whatever the model says: greedy tokens are the argmax of
their own top logprobs, streamed deltas add up to the whole answer, constrained text parses and obeys
its schema / choice / regex, token counts match the tokenizer loaded here.
"""
from __future__ import annotations

import json
import re

import httpx
import openai
import pytest

from tests.server.conftest import API_KEY, MODEL, metric

PROMPT = "The capital of France is"
CHAT = [{"role": "user", "content": "Name a colour."}]


@pytest.fixture(scope="module")
def tokenizer():
    from flagstack.engine.loader import embedded_gguf_path
    from flagstack.engine.tokenizer import load_gguf_tokenizer

    return load_gguf_tokenizer(embedded_gguf_path())


def test_models_lists_the_served_model(client):
    models = client.models.list().data
    assert [m.id for m in models] == [MODEL]


def test_completion_greedy_logprobs_are_consistent(client, tokenizer):
    out = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=6, temperature=0, logprobs=3)
    choice = out.choices[0]
    lp = choice.logprobs
    assert choice.finish_reason == "length" and out.usage.completion_tokens == 6
    assert out.usage.prompt_tokens == len(tokenizer.encode(PROMPT))
    assert "".join(lp.tokens) == choice.text and len(lp.tokens) == 6
    for token, value, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert 3 <= len(top) <= 4 and value <= 0
        assert value == pytest.approx(max(top.values()))  # greedy: the chosen token is the most likely
        assert top[token] == value
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(6)]
    again = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=6, temperature=0)
    assert again.choices[0].text == choice.text


def test_completion_echo_and_token_prompts(client, tokenizer):
    ids = tokenizer.encode(PROMPT)
    texts = client.completions.create(model=MODEL, prompt=[PROMPT, "Hi"], max_tokens=3, temperature=0, echo=True,
                                      logprobs=1)
    tokens = client.completions.create(model=MODEL, prompt=ids, max_tokens=3, temperature=0, echo=True, logprobs=1)
    assert [c.index for c in texts.choices] == [0, 1] and texts.choices[1].text.startswith("Hi")
    assert tokens.choices[0].text == texts.choices[0].text
    c = tokens.choices[0]
    assert c.text.startswith(PROMPT) and len(c.text) > len(PROMPT)
    assert c.logprobs.token_logprobs[0] is None  # the first prompt token has nothing before it
    assert len(c.logprobs.tokens) == len(ids) + 3 and "".join(c.logprobs.tokens) == c.text
    assert all(v <= 0 for v in c.logprobs.token_logprobs[1:])
    assert texts.usage.prompt_tokens == len(ids) + len(tokenizer.encode("Hi"))
    assert texts.usage.completion_tokens == 6


def test_stop_string_ends_the_text(client):
    free = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=8, temperature=0).choices[0].text
    stop = free.strip()[:2]
    out = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=8, temperature=0, stop=[stop]).choices[0]
    assert out.finish_reason == "stop" and stop not in out.text and free.startswith(out.text)


def test_n_samples_seeded(client):
    kwargs = dict(model=MODEL, messages=CHAT, max_tokens=5, temperature=1.0, n=3, seed=7, logprobs=True)
    first = client.chat.completions.create(**kwargs)
    second = client.chat.completions.create(**kwargs)
    assert [c.index for c in first.choices] == [0, 1, 2]
    assert [c.message.content for c in first.choices] == [c.message.content for c in second.choices]
    assert first.usage.completion_tokens == sum(len(c.logprobs.content) for c in first.choices)


@pytest.mark.both_engine_modes
def test_chat_stream_with_usage_matches_whole_answer(client):
    kwargs = dict(model=MODEL, messages=CHAT, max_tokens=8, temperature=0)
    whole = client.chat.completions.create(**kwargs)
    chunks = list(client.chat.completions.create(**kwargs, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens


def test_completion_stream_ends_with_done(http):
    with http.stream("POST", "/v1/completions", json={"model": MODEL, "prompt": PROMPT, "max_tokens": 3,
                                                      "stream": True, "temperature": 0}) as response:
        events = [line for line in response.iter_lines() if line]
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(e[len("data: "):]) for e in events[:-1]]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


def test_chat_logprobs(client):
    out = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=4, temperature=0, logprobs=True,
                                         top_logprobs=3)
    content = out.choices[0].logprobs.content
    assert len(content) == out.usage.completion_tokens
    assert "".join(e.token for e in content) == out.choices[0].message.content
    for e in content:
        tops = [t.logprob for t in e.top_logprobs]
        assert len(tops) == 3 and tops == sorted(tops, reverse=True)
        assert e.logprob == pytest.approx(tops[0]) and e.token == e.top_logprobs[0].token
        assert bytes(e.bytes).decode() == e.token


def test_structured_choice(client):
    out = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Is fire hot?"}],
                                         max_tokens=10, temperature=0,
                                         extra_body={"structured_outputs": {"choice": ["yes", "no", "maybe so"]}})
    assert out.choices[0].message.content in ("yes", "no", "maybe so")
    assert out.choices[0].finish_reason == "stop"


def test_structured_regex(client):
    out = client.completions.create(model=MODEL, prompt="Call me at", max_tokens=16, temperature=0.7, seed=3,
                                    extra_body={"structured_outputs": {"regex": r"\([0-9]{3}\) [0-9]{3}-[0-9]{4}"}})
    assert re.fullmatch(r"\([0-9]{3}\) [0-9]{3}-[0-9]{4}", out.choices[0].text)


@pytest.mark.both_engine_modes
def test_structured_json_schema(client):
    schema = {"type": "object", "additionalProperties": False, "required": ["name", "age"],
              "properties": {"name": {"type": "string", "maxLength": 8}, "age": {"type": "integer", "minimum": 0,
                                                                                 "maximum": 120}}}
    out = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Describe a person as JSON."}], max_tokens=40,
        temperature=0, response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": schema}})
    data = json.loads(out.choices[0].message.content)
    assert set(data) == {"name", "age"} and isinstance(data["name"], str) and len(data["name"]) <= 8
    assert isinstance(data["age"], int) and 0 <= data["age"] <= 120


def test_structured_json_object_and_vllm_json(client):
    out = client.completions.create(model=MODEL, prompt='{"a": 1} is JSON. Another small JSON object: ',
                                    max_tokens=30, temperature=0,
                                    extra_body={"response_format": {"type": "json_object"}})
    assert out.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(out.choices[0].text), dict)
    schema = {"type": "array", "items": {"type": "boolean"}, "minItems": 2, "maxItems": 2}
    out = client.completions.create(model=MODEL, prompt="Two booleans:", max_tokens=20, temperature=0,
                                    extra_body={"structured_outputs": {"json": schema}})
    value = json.loads(out.choices[0].text)
    assert isinstance(value, list) and len(value) == 2 and all(isinstance(v, bool) for v in value)


def test_named_tool_choice_returns_a_tool_call(client):
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "required": ["city"], "additionalProperties": False,
        "properties": {"city": {"type": "string", "maxLength": 12}}}}}]
    kwargs = dict(model=MODEL, messages=[{"role": "user", "content": "Weather in Paris?"}], max_tokens=30,
                  temperature=0, tools=tools, tool_choice={"type": "function", "function": {"name": "get_weather"}})
    out = client.chat.completions.create(**kwargs)
    call = out.choices[0].message.tool_calls[0]
    assert out.choices[0].finish_reason == "tool_calls" and call.function.name == "get_weather"
    assert set(json.loads(call.function.arguments)) == {"city"}
    streamed = [c for c in client.chat.completions.create(**kwargs, stream=True) if c.choices]
    calls = [t for c in streamed for t in (c.choices[0].delta.tool_calls or [])]
    assert [(t.function.name, t.function.arguments) for t in calls] == [("get_weather", call.function.arguments)]
    assert streamed[-1].choices[0].finish_reason == "tool_calls"


def test_tokenize_detokenize(http, tokenizer):
    text = "Hello, flagstack!"
    body = http.post("/tokenize", json={"model": MODEL, "prompt": text}).json()
    assert body["tokens"] == tokenizer.encode(text) and body["count"] == len(body["tokens"])
    assert http.post("/detokenize", json={"model": MODEL, "tokens": body["tokens"]}).json()["prompt"] == text
    chat = http.post("/tokenize", json={"messages": CHAT}).json()
    expected = tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=False)
    assert chat["tokens"] == tokenizer.encode(expected, add_special_tokens=False)


@pytest.mark.both_engine_modes
def test_metrics_count_requests_and_tokens(client, http):
    before = metric(http, "flagstack:generation_tokens_total")
    requests = metric(http, "flagstack:e2e_request_latency_seconds_count")
    client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=3, temperature=0)
    assert metric(http, "flagstack:generation_tokens_total") == before + 3
    assert metric(http, "flagstack:e2e_request_latency_seconds_count") == requests + 1
    text = http.get("/metrics").text
    for name in ("time_to_first_token_seconds_bucket", "time_per_output_token_seconds_count",
                 "num_requests_running", "num_requests_waiting", "kv_cache_usage_perc", "prefix_cache_hit_rate",
                 "prompt_tokens_total", "request_success_total"):
        assert f"flagstack:{name}" in text


def test_api_key_is_required(server):
    bad = openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    response = httpx.post(server.url + "/v1/completions", json={"model": MODEL, "prompt": "x"})
    assert response.status_code == 401 and response.json()["error"]["type"] == "authentication_error"
    assert httpx.get(server.url + "/health").status_code == 200  # open for load balancers
    ok = httpx.get(server.url + "/v1/models", headers={"Authorization": f"Bearer {API_KEY}"})
    assert ok.status_code == 200
