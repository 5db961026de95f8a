"""Prompt building: head+tail cuts, overlapping chunks, packing within budget, shared prefix."""
import pytest

from flagstack.annotate.prompt import PromptBuilder, PromptConfig, head_tail, interleave_by_label, split_chunks
from tests.annotate.fakes import ByteTokenizer, toy_items, toy_task


def test_head_tail():
    ids = list(range(20))
    assert head_tail(ids, 30, [99]) == ids
    assert head_tail(ids, 7, [99]) == [0, 1, 2, 99, 17, 18, 19]
    assert head_tail(ids, 6, [98, 99]) == [0, 1, 98, 99, 18, 19]
    assert len(head_tail(ids, 1, [98, 99])) == 1


def test_split_chunks_cover_with_overlap():
    ids = list(range(25))
    chunks = split_chunks(ids, 10, 3, 8)
    assert chunks[0] == list(range(10)) and chunks[1][:3] == [7, 8, 9] and chunks[-1] == list(range(15, 25))
    assert sorted(set(i for c in chunks for i in c)) == ids
    assert split_chunks(ids[:5], 10, 3, 8) == [ids[:5]]
    capped = split_chunks(list(range(100)), 10, 0, 3)
    assert len(capped) == 3 and capped[-1][-1] == 99 and capped[0][0] == 0


def test_interleave_by_label():
    demos = [{"id": i, "gold": g} for i, g in enumerate("aaabbc")]
    assert [d["gold"] for d in interleave_by_label(demos)] == list("abcaba")


def test_pack_respects_budget_and_prefix_is_shared():
    task = toy_task(prompt={"input_prefix": "Text:", "answer_prefix": "Label:"})
    cfg = PromptConfig(max_prompt_tokens=400, demo_tokens=20, query_tokens=60, overlap=10)
    builder = PromptBuilder(task, ByteTokenizer(), cfg)
    pool = [{"id": f"d{i}", "text": "x" * 50, "gold": ["apple", "banana", "cherry"][i % 3]} for i in range(30)]
    packed = builder.pack(pool)
    assert 0 < len(packed) < 30
    prompts = builder.item_prompts("y" * 150, packed)  # 150 bytes -> 3 chunks of 60 with overlap 10
    assert len(prompts) == 3 and all(len(p) <= cfg.max_prompt_tokens for p in prompts)
    prefix = builder.prefix(packed)
    assert all(p[:len(prefix)] == prefix for p in prompts)
    text = ByteTokenizer().decode(prompts[0])
    assert text.startswith("Pick the fruit.\nLabels:\n- apple: red") and text.endswith("\nLabel:")
    assert "Text: " + "x" * 7 + " [...] " + "x" * 6 + "\n" in text  # 50 cut to 20: 7 head, 7 marker, 6 tail
    assert [ByteTokenizer().decode(c) for c in builder.candidates()] == [" apple", " banana", " cherry"]


def test_chat_format_shares_prefix():
    builder = PromptBuilder(toy_task(prompt={"format": "chat"}), ByteTokenizer(), PromptConfig(max_prompt_tokens=900))
    demos = toy_items(2, "d")
    prompts = builder.item_prompts("some text", demos)
    text = ByteTokenizer().decode(prompts[0])
    assert text.startswith("<system>Pick the fruit.") and text.endswith("<user>Text: some text</user><assistant>")
    assert "<assistant>apple</assistant>" in text
    assert ByteTokenizer().decode(builder.candidates()[0]) == "apple"


def test_config_errors():
    with pytest.raises(ValueError, match="overlap"):
        PromptConfig(query_tokens=10, overlap=10)
    with pytest.raises(ValueError, match="order"):
        PromptConfig(order="random")
    with pytest.raises(ValueError, match="max_prompt_tokens"):
        PromptBuilder(toy_task(), ByteTokenizer(), PromptConfig(max_prompt_tokens=70, query_tokens=60, overlap=0))


def test_single_chunk_cuts_the_item_head_and_tail():
    cfg = PromptConfig(max_prompt_tokens=400, query_tokens=40, overlap=0, max_chunks=1)
    builder = PromptBuilder(toy_task(prompt={"input_prefix": "Text:", "answer_prefix": "Label:"}), ByteTokenizer(), cfg)
    text = "TITLE " + "m" * 200 + " END"
    prompts = builder.item_prompts(text, [])
    assert len(prompts) == 1
    # 40 bytes: 7 for the marker, 17 head, 16 tail (the head gets the larger half).
    want = "Text: TITLE " + "m" * 11 + " [...] " + "m" * 12 + " END\nLabel:"
    assert ByteTokenizer().decode(prompts[0]).endswith(want)
    assert len(PromptBuilder(toy_task(), ByteTokenizer(), PromptConfig(
        max_prompt_tokens=400, query_tokens=40, overlap=0, max_chunks=2)).item_prompts(text, [])) == 2


def test_with_answer_prefix_asks_the_same_item_otherwise():
    builder = PromptBuilder(toy_task(), ByteTokenizer(), PromptConfig(max_prompt_tokens=600, query_tokens=200))
    other = builder.with_answer_prefix("Kind:")
    text = "this is about apple"
    (mine,), (theirs,) = builder.item_prompts(text, []), other.item_prompts(text, [])
    tok = ByteTokenizer()
    assert tok.decode(mine).endswith("Label:") and tok.decode(theirs).endswith("Kind:")
    assert tok.decode(mine)[:-len("Label:")] == tok.decode(theirs)[:-len("Kind:")]
    assert other.doc_ids(text) is builder.doc_ids(text)  # encoded once for both
