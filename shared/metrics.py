"""A tiny Prometheus registry: counters, gauges and histograms with labels, rendered as text.

    registry = Registry()
    requests = registry.counter("tp_requests_total", "HTTP requests.", ("endpoint", "status"))
    requests.inc(endpoint="/v1/completions", status="200")
    latency = registry.histogram("tp_ttft_seconds", "Time to first token.", ("model",))
    latency.observe(0.12, model="m")
    body = registry.render()   # text exposition format 0.0.4, served as CONTENT_TYPE

Each service owns one Registry (no module-level global). Updates take a lock, so a
worker's engine thread may count too.
"""

from __future__ import annotations

import math
import re
import threading
from bisect import bisect_left
from collections.abc import Iterable, Sequence

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
DEFAULT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


class MetricError(ValueError):
    pass


class _Metric:
    kind = ""

    def __init__(self, name: str, help: str, labels: Sequence[str], lock: threading.Lock):
        if not _NAME.match(name):
            raise MetricError(f"metric name {name!r} must match {_NAME.pattern}")
        for label in labels:
            if not _LABEL.match(label) or label.startswith("__") or label == "le":
                raise MetricError(f"metric {name}: label name {label!r} is not allowed")
        self.name = name
        self.help = help
        self.label_names = tuple(labels)
        self._lock = lock
        self._values: dict[tuple[str, ...], object] = {}

    def _key(self, labels: dict[str, object]) -> tuple[str, ...]:
        if set(labels) != set(self.label_names):
            raise MetricError(f"metric {self.name} takes labels {self.label_names}, got {tuple(labels)}")
        return tuple(str(labels[n]) for n in self.label_names)

    def _header(self) -> list[str]:
        return [f"# HELP {self.name} {_escape_help(self.help)}", f"# TYPE {self.name} {self.kind}"]

    def _labels_text(self, key: tuple[str, ...], extra: tuple[tuple[str, str], ...] = ()) -> str:
        pairs = [*zip(self.label_names, key), *extra]
        if not pairs:
            return ""
        return "{" + ",".join(f'{n}="{_escape_value(v)}"' for n, v in pairs) + "}"


class Counter(_Metric):
    kind = "counter"

    def inc(self, amount: float = 1.0, **labels) -> None:
        if amount < 0:
            raise MetricError(f"counter {self.name} can only go up (got {amount})")
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, **labels) -> float:
        with self._lock:
            return self._values.get(self._key(labels), 0.0)

    def render(self) -> list[str]:
        with self._lock:
            items = sorted(self._values.items())
        return self._header() + [f"{self.name}{self._labels_text(k)} {_number(v)}" for k, v in items]


class Gauge(Counter):
    kind = "gauge"

    def inc(self, amount: float = 1.0, **labels) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def dec(self, amount: float = 1.0, **labels) -> None:
        self.inc(-amount, **labels)

    def set(self, value: float, **labels) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = float(value)


class Histogram(_Metric):
    kind = "histogram"

    def __init__(self, name, help, labels, lock, buckets: Sequence[float] = DEFAULT_BUCKETS):
        super().__init__(name, help, labels, lock)
        bounds = sorted(float(b) for b in buckets if not math.isinf(b))
        if not bounds or len(set(bounds)) != len(bounds):
            raise MetricError(f"histogram {name}: buckets must be distinct finite numbers")
        self.buckets = tuple(bounds)

    def observe(self, value: float, **labels) -> None:
        self.observe_many((value,), **labels)

    def observe_many(self, values: Iterable[float], **labels) -> None:
        """Every value of `values` under one label set (one lookup and one lock for them all)."""
        key = self._key(labels)
        buckets = self.buckets
        with self._lock:
            counts, total = self._values.get(key) or ([0] * (len(buckets) + 1), 0.0)
            for value in values:
                counts[bisect_left(buckets, value)] += 1  # the first bucket whose bound is >= value
                total += value
            self._values[key] = (counts, total)

    def count(self, **labels) -> int:
        with self._lock:
            entry = self._values.get(self._key(labels))
        return sum(entry[0]) if entry else 0

    def render(self) -> list[str]:
        with self._lock:
            items = sorted((k, (list(c), s)) for k, (c, s) in self._values.items())
        lines = self._header()
        for key, (counts, total) in items:
            cumulative = 0
            for bound, n in zip((*self.buckets, math.inf), counts):
                cumulative += n
                lines.append(f"{self.name}_bucket{self._labels_text(key, (('le', _number(bound)),))} {cumulative}")
            lines.append(f"{self.name}_sum{self._labels_text(key)} {_number(total)}")
            lines.append(f"{self.name}_count{self._labels_text(key)} {cumulative}")
        return lines


class Registry:
    def __init__(self):
        self._lock = threading.Lock()
        self._metrics: dict[str, _Metric] = {}

    def counter(self, name: str, help: str, labels: Sequence[str] = ()) -> Counter:
        return self._add(Counter(name, help, labels, self._lock))

    def gauge(self, name: str, help: str, labels: Sequence[str] = ()) -> Gauge:
        return self._add(Gauge(name, help, labels, self._lock))

    def histogram(self, name: str, help: str, labels: Sequence[str] = (), buckets=DEFAULT_BUCKETS) -> Histogram:
        return self._add(Histogram(name, help, labels, self._lock, buckets))

    def _add(self, metric):
        if metric.name in self._metrics:
            raise MetricError(f"metric {metric.name} is registered twice")
        self._metrics[metric.name] = metric
        return metric

    def render(self) -> str:
        lines = []
        for metric in self._metrics.values():
            lines.extend(metric.render())
        return "\n".join(lines) + "\n"


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e15 else repr(float(value))


def _escape_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")
