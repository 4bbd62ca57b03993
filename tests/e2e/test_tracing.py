"""One request, one trace: W3C trace context travels gateway -> router -> worker in NATS headers."""

import re

import openai

from .conftest import Stack

SPAN = re.compile(r'"name": "([\w.]+)",\s*"context": \{\s*"trace_id": "(0x[0-9a-f]+)"')


def test_spans_of_one_request_share_a_trace(tmp_path, catalog, monkeypatch):
    monkeypatch.setenv("TOKENPOOL_OTEL", "console")
    stack = Stack(tmp_path, catalog).start(workers=1)
    try:
        stack.wait_healthy()
        client = openai.OpenAI(base_url=stack.base_url + "/v1", api_key="unused", max_retries=0, timeout=120)
        client.completions.create(model="demo-llama", prompt="Hello", max_tokens=4, temperature=0)
    finally:
        stack.stop()  # the exporters flush on shutdown
    spans = {}
    for service in ("gateway", "router", "worker-0"):
        for name, trace_id in SPAN.findall(stack.services[service].log_path.read_text()):
            spans.setdefault(name, set()).add(trace_id)
    for name in ("gateway.request", "router.queue", "worker.prefill", "worker.decode"):
        assert name in spans, f"no {name} span; saw {sorted(spans)}"
    (trace_id,) = spans["gateway.request"]
    assert {trace_id} == spans["router.queue"] == spans["worker.prefill"] == spans["worker.decode"]
