"""Prometheus metrics of the answering service: traffic, latency by route, stage times, model version.

Each app gets its own registry, so two apps in one process (tests) never share counters.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

# Search is tens of milliseconds, ask seconds: one bucket set covering both.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
CONTENT_TYPE = CONTENT_TYPE_LATEST


@dataclass
class Metrics:
    """The service's instruments, registered in a registry of their own."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.requests = Counter("serve_requests", "HTTP requests", ["route", "method", "status"], registry=r)
        self.latency = Histogram("serve_request_seconds", "request latency", ["route"], buckets=BUCKETS, registry=r)
        self.retrieval = Histogram("serve_retrieval_seconds", "Weaviate retrieval time", buckets=BUCKETS, registry=r)
        self.generation = Histogram("serve_generation_seconds", "generation time", buckets=BUCKETS, registry=r)
        self.auth = Counter("serve_auth_decisions", "authentication decisions", ["method", "outcome"], registry=r)
        self.model = Gauge("serve_model_info", "the model version serving answers (value 1)", ["version"], registry=r)

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count one request and record its latency under its route template (never the raw path)."""
        self.requests.labels(route, method, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def set_model_version(self, version: str) -> None:
        """Only the serving version carries the value 1."""
        self.model.clear()
        self.model.labels(version).set(1)

    def render(self) -> bytes:
        return generate_latest(self.registry)
