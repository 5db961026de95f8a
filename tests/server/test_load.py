"""A burst of concurrent streaming clients, some leaving early, against a server that holds 4 sequences
at a time: the others queue, /health keeps answering, every staying client gets all its tokens, the
leavers' requests are aborted, and afterwards no KV block is held."""
from __future__ import annotations

import json
import threading
import time

import pytest

from tests.server.conftest import MODEL, metric

CLIENTS, LEAVERS, TOKENS = 10, 4, 12


def stream(http, index: int, leave_early: bool, results: dict) -> None:
    body = {"model": MODEL, "prompt": f"Story number {index}:", "max_tokens": TOKENS, "temperature": 0,
            "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True}}
    with http.stream("POST", "/v1/completions", json=body) as response:
        chunks = []
        for line in response.iter_lines():
            if not line:
                continue
            if leave_early:  # one chunk, then close the connection mid-stream
                results[index] = "left"
                return
            chunks.append(line)
    *body_chunks, usage = [json.loads(c[6:]) for c in chunks[:-1]]
    results[index] = (chunks[-1], body_chunks[-1]["choices"][0]["finish_reason"], usage["usage"]["completion_tokens"])


@pytest.mark.both_engine_modes
def test_burst_with_disconnects_queues_completes_and_frees_the_cache(http):
    aborted = metric_or_zero(http, 'flagstack:request_success_total{finished_reason="abort"}')
    results: dict = {}
    threads = [threading.Thread(target=stream, args=(http, i, i < LEAVERS, results)) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    health_s, waiting = [], []
    while any(t.is_alive() for t in threads):
        start = time.monotonic()
        assert http.get("/health").status_code == 200
        health_s.append(time.monotonic() - start)
        waiting.append(metric(http, "flagstack:num_requests_waiting"))
        time.sleep(0.2)
    for t in threads:
        t.join()
    assert max(waiting) >= 1  # 10 clients, 4 sequences per step: some had to queue
    assert max(health_s) < 5.0, health_s  # the event loop never waits on the engine
    assert [results[i] for i in range(LEAVERS)] == ["left"] * LEAVERS
    for i in range(LEAVERS, CLIENTS):
        assert results[i] == ("data: [DONE]", "length", TOKENS)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and metric(http, "flagstack:kv_cache_usage_perc") > 0:
        time.sleep(0.2)
    assert metric(http, "flagstack:kv_cache_usage_perc") == 0.0
    assert metric(http, "flagstack:num_requests_running") == metric(http, "flagstack:num_requests_waiting") == 0
    assert metric_or_zero(http, 'flagstack:request_success_total{finished_reason="abort"}') >= aborted + 1


def metric_or_zero(http, name: str) -> float:
    try:
        return metric(http, name)
    except KeyError:
        return 0.0
