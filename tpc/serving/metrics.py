"""Prometheus metrics of one server, in a registry of its own (several servers in one process stay apart).

``process_resident_memory_bytes`` (prometheus_client's process collector) is what
``tpc loadtest`` reads for the server's RSS before and after a run.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 60.0, 120.0, 300.0)
PER_TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
TOKEN_COUNT_BUCKETS = (8, 16, 32, 64, 128, 192, 256, 320, 576, 1024, 2048, 4096)


class ServerMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, max_batch: int):
        self.registry = registry = CollectorRegistry()
        ProcessCollector(registry=registry)
        self.requests = Counter(
            "tpc_requests", "Chat completion requests answered, by HTTP status.", ["status"], registry=registry
        )
        self.errors = Counter(
            "tpc_request_errors", "Chat completion requests that failed, by error type.", ["type"], registry=registry
        )
        self.cancelled = Counter(
            "tpc_requests_cancelled",
            "Requests given up before they finished (client disconnect, timeout).",
            ["reason"],
            registry=registry,
        )
        self.queue_depth = Gauge("tpc_queue_depth", "Requests waiting for the model worker.", registry=registry)
        self.running = Gauge("tpc_running_requests", "Requests in the batch the worker runs now.", registry=registry)
        self.batch_size = Histogram(
            "tpc_batch_size",
            "Requests per generate call.",
            buckets=tuple(range(1, max_batch + 1)),
            registry=registry,
        )
        self.ttft = Histogram(
            "tpc_time_to_first_token_seconds",
            "From the request's arrival (queueing included) to its first generated token.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.decode = Histogram(
            "tpc_decode_seconds_per_token",
            "Mean time per generated token after the first, per request.",
            buckets=PER_TOKEN_BUCKETS,
            registry=registry,
        )
        self.latency = Histogram(
            "tpc_request_duration_seconds",
            "From the request's arrival to its last generated token.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.generated = Counter("tpc_generated_tokens", "Tokens generated for clients.", registry=registry)
        self.visual_tokens = Histogram(
            "tpc_visual_tokens_kept",
            "Visual tokens that reached the language model, per request with an image.",
            buckets=TOKEN_COUNT_BUCKETS,
            registry=registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
