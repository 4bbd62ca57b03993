"""What the gateway counts, served on GET /metrics."""

from __future__ import annotations

from shared.metrics import Registry

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
TOKEN_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5, 5.0)


class GatewayMetrics:
    def __init__(self):
        r = self.registry = Registry()
        self.requests = r.counter("tokenpool_gateway_requests_total", "HTTP requests answered.", ("endpoint", "status"))
        self.errors = r.counter("tokenpool_gateway_errors_total", "Error answers, by error code.", ("status", "code"))
        self.inflight = r.gauge("tokenpool_gateway_inflight_requests", "Generation requests being served now.")
        self.ttft = r.histogram(
            "tokenpool_gateway_ttft_seconds", "Time from request to first token.", ("model",), LATENCY_BUCKETS
        )
        self.token_latency = r.histogram(
            "tokenpool_gateway_token_latency_seconds", "Time between output tokens.", ("model",), TOKEN_BUCKETS
        )
        self.tokens_out = r.counter("tokenpool_gateway_tokens_out_total", "Output tokens delivered.", ("model",))
        self.cancelled = r.counter(
            "tokenpool_gateway_cancelled_total", "Requests cancelled upstream, by reason.", ("reason",)
        )

    def render(self) -> str:
        return self.registry.render()
