"""shared.metrics: the Prometheus text a scraper reads."""

import pytest

from shared.metrics import MetricError, Registry


def test_counters_gauges_and_histograms_render_as_prometheus_text():
    r = Registry()
    requests = r.counter("http_requests_total", "Requests.", ("endpoint", "status"))
    requests.inc(endpoint="/v1/completions", status="200")
    requests.inc(2, endpoint="/v1/completions", status="200")
    requests.inc(endpoint='we"ird\\path\n', status="400")
    inflight = r.gauge("inflight", "In flight.")
    inflight.inc()
    inflight.inc()
    inflight.dec()
    latency = r.histogram("ttft_seconds", "TTFT.", ("model",), buckets=(0.1, 1.0))
    for v in (0.05, 0.5, 0.7, 3.0):
        latency.observe(v, model="m")
    text = r.render()
    assert text.splitlines() == [
        "# HELP http_requests_total Requests.",
        "# TYPE http_requests_total counter",
        'http_requests_total{endpoint="/v1/completions",status="200"} 3',
        'http_requests_total{endpoint="we\\"ird\\\\path\\n",status="400"} 1',
        "# HELP inflight In flight.",
        "# TYPE inflight gauge",
        "inflight 1",
        "# HELP ttft_seconds TTFT.",
        "# TYPE ttft_seconds histogram",
        'ttft_seconds_bucket{model="m",le="0.1"} 1',
        'ttft_seconds_bucket{model="m",le="1"} 3',
        'ttft_seconds_bucket{model="m",le="+Inf"} 4',
        'ttft_seconds_sum{model="m"} 4.25',
        'ttft_seconds_count{model="m"} 4',
    ]
    assert requests.value(endpoint="/v1/completions", status="200") == 3 and latency.count(model="m") == 4


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda r: r.counter("bad name", "x"), "must match"),
        (lambda r: r.counter("c", "x", ("le",)), "not allowed"),
        (lambda r: r.counter("c", "x", ("a",)).inc(b=1), r"takes labels \('a',\)"),
        (lambda r: r.counter("c", "x").inc(-1), "can only go up"),
        (lambda r: (r.counter("c", "x"), r.gauge("c", "y")), "registered twice"),
        (lambda r: r.histogram("h", "x", buckets=()), "buckets"),
    ],
)
def test_misuse_is_refused_with_a_clear_message(make, message):
    with pytest.raises(MetricError, match=message):
        make(Registry())
