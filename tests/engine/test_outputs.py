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
