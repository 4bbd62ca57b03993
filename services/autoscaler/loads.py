"""Per-model demand from RouterState reports: latest queued/running, arrivals since the last look."""

from __future__ import annotations

from collections import Counter

from shared.protocol import ModelLoad, RouterState


class RecentLoads:
    def __init__(self):
        self._latest: dict[str, tuple[RouterState, float]] = {}
        self._seen_arrivals: dict[tuple[str, str], int] = {}

    def observe(self, state: RouterState, now: float) -> None:
        self._latest[state.router_id] = (state, now)

    def take(self, now: float, timeout_s: float) -> list[ModelLoad]:
        """Loads summed over live routers; `arrivals` counts those since the previous take
        (a restarted router's counter starts again from 0)."""
        queued, running, arrivals = Counter(), Counter(), Counter()
        for router_id, (state, seen_at) in list(self._latest.items()):
            if now - seen_at > timeout_s:
                del self._latest[router_id]
                continue
            for load in state.models:
                before = self._seen_arrivals.get((router_id, load.name), 0)
                arrivals[load.name] += load.arrivals - before if load.arrivals >= before else load.arrivals
                self._seen_arrivals[(router_id, load.name)] = load.arrivals
                queued[load.name] += load.queued
                running[load.name] += load.running
        names = sorted(set(queued) | set(running) | set(arrivals))
        return [ModelLoad(m, queued[m], running[m], arrivals[m]) for m in names]
