"""Prometheus metrics of the server (vLLM-like names under `flagstack:`), in a registry per app.

Counters and histograms are fed as requests finish; the gauges (running / waiting requests, KV-cache
usage, prefix-cache hit rate) are set at scrape time from the engine's stats (AsyncLLM.live_stats: read
during the step in thread mode, between two steps from an engine process).
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from flagstack.engine.outputs import RequestOutput

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
_TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.http_requests = Counter("flagstack:http_requests", "HTTP requests by route and status",
                                     ["route", "status"], registry=r)
        self.finished = Counter("flagstack:request_success", "Finished requests by finish reason",
                                ["finished_reason"], registry=r)
        self.prompt_tokens = Counter("flagstack:prompt_tokens", "Prompt tokens of finished requests", registry=r)
        self.generation_tokens = Counter("flagstack:generation_tokens", "Generated tokens", registry=r)
        self.ttft = Histogram("flagstack:time_to_first_token_seconds", "Time to first token",
                              buckets=_LATENCY_BUCKETS, registry=r)
        self.tpot = Histogram("flagstack:time_per_output_token_seconds", "Time per output token after the first",
                              buckets=_TOKEN_BUCKETS, registry=r)
        self.e2e = Histogram("flagstack:e2e_request_latency_seconds", "Arrival to last token",
                             buckets=_LATENCY_BUCKETS, registry=r)
        self.gauges = {  # engine stats key -> gauge
            "num_requests_running": Gauge("flagstack:num_requests_running",
                                          "Requests with a sequence in the running batch", registry=r),
            "num_requests_waiting": Gauge("flagstack:num_requests_waiting",
                                          "Requests with a sequence waiting for KV blocks or a batch slot", registry=r),
            "kv_cache_usage": Gauge("flagstack:kv_cache_usage_perc", "Share of KV blocks held by sequences (0..1)",
                                    registry=r),
            "prefix_cache_hit_rate": Gauge("flagstack:prefix_cache_hit_rate",
                                           "Prompt tokens served by the prefix cache / prompt tokens", registry=r),
        }

    def observe(self, out: RequestOutput, num_generated: int) -> None:
        """Record one finished engine request (all its n sequences)."""
        m = out.metrics
        for choice in out.outputs:
            self.finished.labels(choice.finish_reason or "abort").inc()
        self.prompt_tokens.inc(len(out.prompt_token_ids))
        self.generation_tokens.inc(num_generated)
        end = m.finished_time
        if m.first_token_time is not None:
            self.ttft.observe(m.first_token_time - m.arrival_time)
            if end is not None and num_generated > len(out.outputs):
                per_seq = num_generated / len(out.outputs)
                self.tpot.observe((end - m.first_token_time) / max(per_seq - 1, 1))
        if end is not None:
            self.e2e.observe(end - m.arrival_time)

    def render(self, stats: dict[str, float]) -> bytes:
        """The exposition text, the gauges set from `stats` (AsyncLLM stats; missing keys keep their value)."""
        for key, gauge in self.gauges.items():
            if key in stats:
                gauge.set(stats[key])
        return generate_latest(self.registry)
