"""A discrete-event loop over a virtual clock: callbacks ordered by time, then by scheduling order.

    loop = EventLoop()
    loop.at(1.5, print, "later")
    handle = loop.after(0.5, print, "sooner")
    handle.cancel()                   # it will not run
    loop.run(until=10.0)              # runs events with time <= 10, then stops with now = 10

Nothing here sleeps: `now` jumps from one event to the next. Two events at the same time run
in the order they were scheduled, so a simulation is deterministic.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable


class Handle:
    """A scheduled callback; `cancel()` keeps it from running."""

    __slots__ = ("time", "callback", "args", "cancelled")

    def __init__(self, time: float, callback: Callable, args: tuple):
        self.time = time
        self.callback = callback
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class EventLoop:
    def __init__(self, start: float = 0.0):
        self.now = start
        self._heap: list[tuple[float, int, Handle]] = []
        self._order = itertools.count()
        self._stopped = False
        self.processed = 0
        """Events run so far (cancelled ones excluded)."""

    def at(self, time: float, callback: Callable, *args) -> Handle:
        """Runs `callback(*args)` at virtual time `time` (not before now)."""
        if math.isnan(time):
            raise ValueError("event time is NaN")
        if time < self.now:
            raise ValueError(f"cannot schedule an event at {time} s: the clock is already at {self.now} s")
        handle = Handle(time, callback, args)
        heapq.heappush(self._heap, (time, next(self._order), handle))
        return handle

    def after(self, delay: float, callback: Callable, *args) -> Handle:
        if delay < 0:
            raise ValueError(f"delay must be >= 0, got {delay}")
        return self.at(self.now + delay, callback, *args)

    def stop(self) -> None:
        """Ends `run` after the current event."""
        self._stopped = True

    def pending(self) -> int:
        return sum(not h.cancelled for _, _, h in self._heap)

    def run(self, until: float = math.inf) -> None:
        """Runs events in time order until none is left, `stop()` is called, or the next one is
        later than `until` (the clock then stands at `until`, if that is finite)."""
        self._stopped = False
        heap = self._heap
        while heap and not self._stopped:
            time, _, handle = heap[0]
            if time > until:
                break
            heapq.heappop(heap)
            if handle.cancelled:
                continue
            self.now = time
            self.processed += 1
            handle.callback(*handle.args)
        if not self._stopped and math.isfinite(until) and until > self.now:
            self.now = until
