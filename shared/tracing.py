"""OpenTelemetry set-up and W3C trace context carried in NATS headers.

Off by default (the API's no-op tracer costs next to nothing); TOKENPOOL_OTEL=console
prints spans, an http(s) URL exports them over OTLP/HTTP.

    setup_tracing("gateway")
    with tracer().start_as_current_span("request") as span:
        await js.publish(subject, data, headers=inject({"Nats-Msg-Id": rid}))
    # on the other side:
    with tracer().start_as_current_span("queue", context=extract(msg.headers)):
        ...
"""

from __future__ import annotations

from collections.abc import Mapping

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from shared import env

_PROPAGATOR = TraceContextTextMapPropagator()


def setup_tracing(service_name: str, exporter: str | None = None) -> bool:
    """Installs a tracer provider for this process; returns False when tracing is off."""
    exporter = exporter or env.otel_exporter()
    if exporter == "off":
        return False
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    if exporter == "console":
        span_exporter = ConsoleSpanExporter()
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        span_exporter = OTLPSpanExporter(endpoint=exporter)
    provider = TracerProvider(resource=Resource.create({"service.name": f"tokenpool-{service_name}"}))
    provider.add_span_processor(BatchSpanProcessor(span_exporter))
    trace.set_tracer_provider(provider)
    return True


def shutdown_tracing() -> None:
    provider = trace.get_tracer_provider()
    if hasattr(provider, "shutdown"):
        provider.shutdown()


def tracer() -> trace.Tracer:
    return trace.get_tracer("tokenpool")


def inject(headers: dict[str, str] | None = None, context: otel_context.Context | None = None) -> dict[str, str]:
    """Returns `headers` plus a `traceparent` for the current (or given) span, if one is recording."""
    carrier = dict(headers or {})
    _PROPAGATOR.inject(carrier, context=context)
    return carrier


def extract(headers: Mapping[str, str] | None) -> otel_context.Context:
    return _PROPAGATOR.extract(dict(headers or {}))


class SpanBook:
    """Open spans by key (a request id), each ended exactly once; their context travels on."""

    def __init__(self):
        self._spans: dict[str, trace.Span] = {}

    def start(self, key: str, name: str, headers: Mapping[str, str] | None = None, **attributes) -> None:
        if key in self._spans:
            return
        span = tracer().start_span(name, context=extract(headers), attributes=attributes)
        self._spans[key] = span

    def headers(self, key: str, headers: dict[str, str] | None = None) -> dict[str, str]:
        """`headers` plus the traceparent of key's span (or no traceparent when there is none)."""
        span = self._spans.get(key)
        if span is None:
            return dict(headers or {})
        return inject(headers, trace.set_span_in_context(span))

    def end(self, key: str, **attributes) -> None:
        span = self._spans.pop(key, None)
        if span is not None:
            span.set_attributes(attributes)
            span.end()
