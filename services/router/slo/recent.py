"""SLO attainment of the requests that finished in the last window: what the router reports
to the autoscaler (RouterState.attainment). Time is passed in."""

from __future__ import annotations

from collections import deque


class RecentAttainment:
    def __init__(self, window_s: float):
        if not window_s > 0:
            raise ValueError(f"window_s={window_s!r} must be > 0 seconds")
        self.window_s = window_s
        self._finished: deque[tuple[float, float]] = deque()
        self._sum = 0.0

    def add(self, now: float, attainment: float) -> None:
        self._finished.append((now, attainment))
        self._sum += attainment

    def mean(self, now: float) -> float | None:
        """Mean attainment over the requests that finished within window_s of `now`; None if none did."""
        while self._finished and self._finished[0][0] < now - self.window_s:
            self._sum -= self._finished.popleft()[1]
        if not self._finished:
            self._sum = 0.0
            return None
        return min(1.0, max(0.0, self._sum / len(self._finished)))
