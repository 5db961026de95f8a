"""bench serve's request set, Poisson arrivals, percentiles and flag round trip (the run itself needs
a GPU-sized model; the lead runs it on an H100)."""
import argparse
import math

import numpy as np
import pytest

from flagstack.bench import serve


def test_requests_are_seeded_and_within_the_stated_ranges():
    a = serve.make_requests(50, (3, 9), (2, 5), vocab=100, seed=1)
    b = serve.make_requests(50, (3, 9), (2, 5), vocab=100, seed=1)
    assert [(r.prompt, r.output_len) for r in a] == [(r.prompt, r.output_len) for r in b]
    assert {len(r.prompt) for r in a} == set(range(3, 10)) and {r.output_len for r in a} == {2, 3, 4, 5}
    assert all(0 <= t < 100 for r in a for t in r.prompt)


def test_poisson_arrivals():
    times = serve.arrival_times(4000, rate=8.0, seed=0)
    gaps = np.diff(times)
    assert times[0] == 0 and (gaps >= 0).all()
    assert gaps.mean() == pytest.approx(1 / 8, rel=0.05)  # exponential gaps: mean 1/rate ...
    assert gaps.std() == pytest.approx(1 / 8, rel=0.08)  # ... and standard deviation 1/rate
    assert serve.arrival_times(5, math.inf, 0) == [0.0] * 5


@pytest.mark.parametrize("q", [0, 50, 90, 99, 100])
def test_percentile_matches_numpy(q):
    values = list(np.random.default_rng(0).normal(size=37))
    assert serve.percentile(values, q) == pytest.approx(np.percentile(values, q))
    assert math.isnan(serve.percentile([], q))


def test_engine_flags_round_trip_to_the_server_command():
    from flagstack.engine.server.command import add_engine_flags, engine_kwargs

    parser = argparse.ArgumentParser()
    serve.add_arguments(parser)
    args = parser.parse_args(["qwen3-4b", "--load-format", "dummy", "--max-model-len", "2048", "--enforce-eager",
                              "--kv-cache-dtype", "fp8", "--rates", "1,inf", "--input-len", "10,20"])
    assert args.rates == [1.0, math.inf] and args.input_len == [10, 20]
    again = argparse.ArgumentParser()
    add_engine_flags(again)
    assert engine_kwargs(again.parse_args(serve.engine_argv(args))) == engine_kwargs(args)
    assert args.engine_modes == ["thread", "process"]  # both server modes in one run by default
    assert parser.parse_args(["--engine-modes", "process"]).engine_modes == ["process"]
    for bad in (["--rates", "0"], ["--input-len", "5"], ["--output-len", "9,3"], ["--engine-modes", "gpu"]):
        with pytest.raises(SystemExit):
            parser.parse_args(bad)
