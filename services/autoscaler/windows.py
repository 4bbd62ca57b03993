"""Per-model arrivals and requested tokens over a sliding window, in fixed buckets.

    window = SlidingCounts(span_s=60, bucket_s=5)
    window.add(now, "m1", requests=1, tokens=256)
    window.totals(now)   # {"m1": (1, 256)}: what arrived in the last 60 s (to a bucket's width)

Time is passed in; nothing here reads a clock.
"""

from __future__ import annotations

import math
from collections import deque


class SlidingCounts:
    def __init__(self, span_s: float, bucket_s: float):
        if not (math.isfinite(span_s) and span_s > 0):
            raise ValueError(f"span_s={span_s!r} must be > 0 seconds")
        if not (math.isfinite(bucket_s) and 0 < bucket_s <= span_s):
            raise ValueError(f"bucket_s={bucket_s!r} must be > 0 and <= span_s ({span_s})")
        self.span_s = span_s
        self.bucket_s = bucket_s
        self._buckets: deque[tuple[int, dict[str, list[int]]]] = deque()

    def add(self, now: float, model: str, requests: int = 1, tokens: int = 0) -> None:
        if requests < 0 or tokens < 0:
            raise ValueError(f"requests={requests}, tokens={tokens}: counts must be >= 0")
        index = math.floor(now / self.bucket_s)
        if self._buckets and index < self._buckets[-1][0]:
            raise ValueError(f"time went backwards: {now} is before the latest bucket")
        if not self._buckets or self._buckets[-1][0] != index:
            self._buckets.append((index, {}))
        counts = self._buckets[-1][1].setdefault(model, [0, 0])
        counts[0] += requests
        counts[1] += tokens

    def totals(self, now: float) -> dict[str, tuple[int, int]]:
        """(requests, tokens) per model over the buckets that overlap the last span_s."""
        oldest = math.floor((now - self.span_s) / self.bucket_s) + 1
        while self._buckets and self._buckets[0][0] < oldest:
            self._buckets.popleft()
        out: dict[str, tuple[int, int]] = {}
        for _, counts in self._buckets:
            for model, (requests, tokens) in counts.items():
                r, t = out.get(model, (0, 0))
                out[model] = (r + requests, t + tokens)
        return out


class CounterWindow:
    """SlidingCounts fed by cumulative counters (a router's arrivals and requested tokens per
    model since it started): each observation adds the increase since the last one from the
    same source; a counter that went back (the source restarted) counts again from zero."""

    def __init__(self, span_s: float, bucket_s: float):
        self.window = SlidingCounts(span_s, bucket_s)
        self._last: dict[tuple[str, str], tuple[int, int]] = {}

    def observe(self, now: float, source: str, model: str, requests: int, tokens: int) -> None:
        before_requests, before_tokens = self._last.get((source, model), (0, 0))
        if requests < before_requests or tokens < before_tokens:
            before_requests, before_tokens = 0, 0
        if requests > before_requests or tokens > before_tokens:
            self.window.add(now, model, requests - before_requests, tokens - before_tokens)
        self._last[(source, model)] = (requests, tokens)

    def totals(self, now: float) -> dict[str, tuple[int, int]]:
        return self.window.totals(now)
