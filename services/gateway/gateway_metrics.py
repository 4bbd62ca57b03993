"""What the gateway counts, served on GET /metrics."""

from __future__ import annotations

from services.router.slo.attainment import RequestSlo
from shared.metrics import Registry

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
TOKEN_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5, 5.0)
ATTAINMENT_BUCKETS = (0.5, 0.8, 0.9, 0.95, 0.99, 1.0)


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

        # Per completed request, against its model's SLO class (services/router/slo/attainment.py).
        self.request_ttft = r.histogram(
            "tp_request_ttft_seconds", "Time from acceptance to first token, per completed request.", ("model",),
            LATENCY_BUCKETS,
        )
        self.request_tbt = r.histogram(
            "tp_request_tbt_seconds", "Every gap between consecutive tokens of completed requests.", ("model",),
            TOKEN_BUCKETS,
        )
        self.request_attainment = r.histogram(
            "tp_request_slo_attainment", "Per-request share of service time with no token past its deadline.",
            ("model",), ATTAINMENT_BUCKETS,
        )
        self.requests_strict = r.counter(
            "tp_requests_slo_strict_total", "Completed requests by whether TTFT and mean TBT met their SLO.",
            ("model", "met"),
        )

    def observe_request_slo(self, model: str, slo: RequestSlo) -> None:
        self.request_ttft.observe(slo.ttft_s, model=model)
        self.request_tbt.observe_many(slo.tbts, model=model)
        self.request_attainment.observe(slo.attainment, model=model)
        self.requests_strict.inc(model=model, met="true" if slo.strict else "false")

    def render(self) -> str:
        return self.registry.render()
