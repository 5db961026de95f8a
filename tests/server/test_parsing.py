"""In-process pieces of the server: the reasoning / tool-call splitter (whole and streamed token by
token), request validation, and the xgrammar constraint driving random logits (no model)."""
from __future__ import annotations

import json
import re

import pytest
import torch

from flagstack.engine.server.chat import OutputSplitter
from flagstack.engine.server.protocol import ApiError, ChatCompletionRequest, CompletionRequest, parse_body
from flagstack.engine.structured import StructuredOutputs, choice_regex

CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


def streamed(splitter: OutputSplitter, text: str, step: int = 3) -> tuple[str, str, list]:
    """Feed text a few characters at a time; parts must only grow; return what a client would add up."""
    reasoning = content = ""
    calls: list = []
    for end in list(range(step, len(text), step)) + [len(text)]:
        part = splitter.split(text[:end], final=end == len(text))
        assert part.reasoning.startswith(reasoning) and part.content.startswith(content)
        assert part.tool_calls[:len(calls)] == calls
        reasoning, content, calls = part.reasoning, part.content, part.tool_calls
    return reasoning, content, calls


@pytest.mark.parametrize("step", [1, 3, 7])
@pytest.mark.parametrize("text,opened,tools,expected", [
    ("<think>\nweigh it\n</think>\n\nThe answer.", False, False, ("\nweigh it\n", "The answer.", [])),
    ("weigh it</think>\n\nThe answer.", True, False, ("weigh it", "The answer.", [])),
    ("<think>\nunfinished thou", False, False, ("\nunfinished thou", "", [])),
    ("Plain < text <b> no tags", False, True, ("", "Plain < text <b> no tags", [])),
    ("Let me check.\n" + CALL, False, True, ("", "Let me check.\n", ["get_weather"])),
    ("<think>x</think>" + CALL + CALL, False, True, ("x", "", ["get_weather", "get_weather"])),
    ("<tool_call>\n{not json}\n</tool_call> after", False, True,
     ("", "<tool_call>\n{not json}\n</tool_call> after", [])),
    ("<tool_call>\n{\"name\": \"f\"", False, True, ("", "<tool_call>\n{\"name\": \"f\"", [])),
    (CALL, False, False, ("", CALL, [])),  # tools not requested: the block is text
])
def test_splitter_whole_and_streamed(text, opened, tools, expected, step):
    whole = OutputSplitter(opened, tools).split(text, final=True)
    got = (whole.reasoning, whole.content, [c["function"]["name"] for c in whole.tool_calls])
    assert got == expected
    reasoning, content, calls = streamed(OutputSplitter(opened, tools), text, step)
    assert (reasoning, content, [c["function"]["name"] for c in calls]) == expected


def test_tool_call_arguments_are_a_json_string_with_stable_ids():
    splitter = OutputSplitter(False, True)
    first = splitter.split(CALL, final=False).tool_calls[0]
    again = splitter.split(CALL + " ", final=True).tool_calls[0]
    assert json.loads(first["function"]["arguments"]) == {"city": "Paris"}
    assert first["id"] == again["id"] and first["id"].startswith("call_") and first["type"] == "function"


def test_partial_tags_are_held_back_until_known():
    splitter = OutputSplitter(False, True)
    assert splitter.split("Hi <tool_", final=False).content == "Hi "
    assert splitter.split("Hi <tool_", final=True).content == "Hi <tool_"
    assert splitter.split("<thi", final=False).content == ""
    assert OutputSplitter(False, False).split("<thinking about", final=False).content == "<thinking about"


@pytest.mark.parametrize("raw,param", [
    (b'{"prompt": "x", "n": true}', "n"),  # strict: a bool is not a count
    (b'{"prompt": "x", "temperature": "0.5"}', "temperature"),  # strict: no strings for numbers
    (b'{"prompt": {"a": 1}}', "prompt"),
    (b'{"prompt": "x", "stream_options": []}', "stream_options"),
])
def test_parse_body_is_strict_and_names_the_field(raw, param):
    with pytest.raises(ApiError) as err:
        parse_body(CompletionRequest, raw)
    assert err.value.param == param and err.value.status == 400


def test_parse_body_accepts_openai_shapes_and_ignores_unknown_fields():
    req = parse_body(ChatCompletionRequest, json.dumps({
        "model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]},
                                   {"role": "assistant", "content": None, "tool_calls": [
                                       {"id": "c1", "type": "function",
                                        "function": {"name": "f", "arguments": "{}"}}]},
                                   {"role": "tool", "content": "42", "tool_call_id": "c1"}],
        "temperature": 1, "logit_bias": {"5": 1}, "parallel_tool_calls": False}).encode())
    assert req.temperature == 1.0 and req.messages[1].tool_calls[0].function.name == "f"


@pytest.fixture(scope="module")
def structured():
    from flagstack.engine.loader import embedded_gguf_path
    from flagstack.engine.tokenizer import load_gguf_tokenizer

    tokenizer = load_gguf_tokenizer(embedded_gguf_path())
    return tokenizer, StructuredOutputs(tokenizer, len(tokenizer) + 64, [tokenizer.eos_token_id])


def drive(structured, kind: str, spec, seed: int, max_steps: int = 60) -> str:
    """Sample from random logits under the constraint until it says stop; the decoded text."""
    tokenizer, so = structured
    constraint = so.factory(so.compile(kind, spec))()
    g = torch.Generator().manual_seed(seed)
    tokens = []
    for _ in range(max_steps):
        logits = torch.randn(so.vocab_size, generator=g)
        constraint.mask_logits(logits)
        assert torch.isinf(logits[len(tokenizer):]).all()  # padding ids past the tokenizer are never allowed
        token = int(torch.argmax(logits))
        tokens.append(token)
        if constraint.accept(token):
            break
    else:
        pytest.fail(f"{kind} did not finish in {max_steps} steps")
    assert tokens[-1] == tokenizer.eos_token_id
    return tokenizer.decode(tokens[:-1])


@pytest.mark.parametrize("seed", [0, 1])
def test_constraint_on_random_logits_obeys_regex_choice_and_schema(structured, seed):
    assert re.fullmatch(r"[a-c]{2}-[0-9]", drive(structured, "regex", r"[a-c]{2}-[0-9]", seed))
    choices = ["red", "green (dark)", "a|b"]
    assert drive(structured, "choice", choices, seed) in choices
    schema = {"type": "object", "required": ["ok", "n"], "additionalProperties": False,
              "properties": {"ok": {"type": "boolean"}, "n": {"enum": [1, 2, 3]}}}
    value = json.loads(drive(structured, "json", schema, seed))
    assert set(value) == {"ok", "n"} and isinstance(value["ok"], bool) and value["n"] in (1, 2, 3)


@pytest.mark.parametrize("kind,spec", [("json", {"type": "nope"}), ("json", "{"), ("regex", "(["),
                                       ("grammar", "root ::= "), ("choice", []), ("choice", "ab"), ("xml", "")])
def test_compile_errors_are_value_errors(structured, kind, spec):
    with pytest.raises(ValueError, match=kind):
        structured[1].compile(kind, spec)


def test_choice_regex_escapes_metacharacters():
    pattern = choice_regex(["a.b", "(x)", "p|q", "1+1"])
    assert all(re.fullmatch(pattern, c) for c in ["a.b", "(x)", "p|q", "1+1"])
    assert not any(re.fullmatch(pattern, c) for c in ["axb", "x", "p", "11"])


def qwen_like_tokenizer():
    """A tokenizer whose chat template acts like Qwen3's: tools listed, thinking opened unless disabled."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"x": 0}, unk_token="x")))
    tok.chat_template = (
        "{% if tools %}TOOLS:{{ tools | map(attribute='function') | map(attribute='name') | join(',') }}\n{% endif %}"
        "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}<assistant>"
        "{% if enable_thinking is defined and not enable_thinking %}<think>\n\n</think>\n\n"
        "{% else %}<think>\n{% endif %}")
    return tok


def chat_request(**fields) -> ChatCompletionRequest:
    body = {"messages": [{"role": "user", "content": "hi"}], **fields}
    return parse_body(ChatCompletionRequest, json.dumps(body).encode())


def test_chat_template_kwargs_switch_thinking_and_tools_reach_the_template():
    from flagstack.engine.server.chat import prompt_opens_reasoning, render_chat

    tok = qwen_like_tokenizer()
    thinking = render_chat(tok, chat_request())
    assert thinking == "<user>hi<assistant><think>\n" and prompt_opens_reasoning(thinking)
    plain = render_chat(tok, chat_request(chat_template_kwargs={"enable_thinking": False}))
    assert plain.endswith("</think>\n\n") and not prompt_opens_reasoning(plain)
    tools = [{"type": "function", "function": {"name": "f"}}, {"type": "function", "function": {"name": "g"}}]
    assert render_chat(tok, chat_request(tools=tools)).startswith("TOOLS:f,g\n")
    assert render_chat(tok, chat_request(tools=tools, tool_choice="none")).startswith("<user>")


def test_forced_tool_schemas():
    from flagstack.engine.server.chat import forced_tool_schema

    params = {"type": "object", "properties": {"q": {"type": "string"}}}
    tools = [{"type": "function", "function": {"name": "f", "parameters": params}},
             {"type": "function", "function": {"name": "g"}}]
    assert forced_tool_schema(chat_request(tools=tools, tool_choice="auto")) is None
    named = chat_request(tools=tools, tool_choice={"type": "function", "function": {"name": "f"}})
    assert forced_tool_schema(named) == (params, "f")
    schema, name = forced_tool_schema(chat_request(tools=tools, tool_choice="required"))
    assert name is None and [s["properties"]["name"]["const"] for s in schema["anyOf"]] == ["f", "g"]
    assert schema["anyOf"][1]["properties"]["arguments"] == {"type": "object"}


def test_grammar_factory_travels_as_its_spec_and_compiles_again(structured):
    """What an engine process receives: the (kind, spec), compiled there; its masks equal the original's."""
    import pickle

    tokenizer, so = structured
    factory = so.compile_factory("regex", "(yes|no)!")
    again = pickle.loads(pickle.dumps(factory))
    assert again.needs_compile and not factory.needs_compile
    with pytest.raises(RuntimeError, match="not compiled"):
        again()
    again.compile_with(so)
    original, copy = factory(), again()
    for token in tokenizer.encode("yes", add_special_tokens=False) + [None]:
        rows = torch.zeros(2, so.vocab_size)
        original.mask_logits(rows[0])
        copy.mask_logits(rows[1])
        assert torch.equal(rows[0], rows[1]) and 0 < int(torch.isinf(rows[0]).sum()) < so.vocab_size
        if token is not None:
            assert not original.accept(token) and not copy.accept(token)
