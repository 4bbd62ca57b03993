"""Placement planning: which models each worker keeps in host memory. Pure: data in, Placement out.

Rules, in order of precedence:
1. a worker holds only models it serves, within its host memory budget;
2. every model is on at least one live worker (when some worker serves it and it fits);
3. hot models (more recent arrivals, queued and running requests) get more workers,
   in proportion to their share of the demand;
4. what the previous placement had stays where it still fits (no churn): a model leaves
   a worker only to make room, and then the surplus copies of the coldest models go first.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

from shared.protocol import ModelLoad, Placement, WorkerPlacement, WorkerState


def plan(
    workers: list[WorkerState],
    loads: list[ModelLoad],
    model_bytes: dict[str, int],
    host_budget_bytes: int,
    previous: Placement | None,
    now: float,
) -> Placement:
    """`workers` are the live ones; `loads[i].arrivals` counts recent arrivals (since the last plan).
    Returns `previous` itself when nothing changes, else a Placement with the next epoch."""
    layout = _Plan(workers, model_bytes, host_budget_bytes)
    demand = {m: 0 for m in model_bytes}
    for load in loads:
        if load.name in demand:
            demand[load.name] += load.queued + load.running + load.arrivals
    total = sum(demand.values()) or 1
    want = {m: max(1, min(len(layout.capable(m)), math.ceil(len(workers) * demand[m] / total))) for m in demand}
    layout.start_from(previous)
    hottest_first = sorted(model_bytes, key=lambda m: (-demand[m], m))
    for model in hottest_first:
        if layout.copies(model) == 0:
            layout.add_somewhere(model, evictable=lambda m: layout.copies(m) > 1)
    for model in hottest_first:

        def evictable(m: str, model=model) -> bool:
            return layout.copies(m) > want[m] and demand[m] < demand[model]

        while layout.copies(model) < want[model] and layout.add_somewhere(model, evictable):
            pass
    result = tuple(WorkerPlacement(w, tuple(sorted(models))) for w, models in sorted(layout.hosted.items()))
    if previous is not None and result == previous.workers:
        return previous
    return Placement(epoch=(previous.epoch + 1) if previous else 1, workers=result, ts=now)


class _Plan:
    def __init__(self, workers: list[WorkerState], model_bytes: dict[str, int], budget: int):
        self.workers = {w.worker_id: w for w in workers}
        self.sizes = model_bytes
        self.budget = budget
        self.hosted: dict[str, set[str]] = {w: set() for w in self.workers}

    def capable(self, model: str) -> list[str]:
        return [w for w, s in self.workers.items() if model in s.serving and self.sizes[model] <= self.budget]

    def copies(self, model: str) -> int:
        return sum(model in models for models in self.hosted.values())

    def free(self, worker_id: str) -> int:
        return self.budget - sum(self.sizes[m] for m in self.hosted[worker_id])

    def start_from(self, previous: Placement | None) -> None:
        """Keeps the previous placement where valid; a worker it did not know keeps what it has loaded."""
        before = {p.worker_id: p.models for p in previous.workers} if previous else {}
        for worker_id, state in self.workers.items():
            if worker_id in before:
                keep: Iterable[str] = before[worker_id]
            else:
                keep = [r.name for r in state.models if r.tier in ("host", "device")]
            for model in keep:
                if model in self.sizes and model in state.serving and self.sizes[model] <= self.free(worker_id):
                    self.hosted[worker_id].add(model)

    def add_somewhere(self, model: str, evictable: Callable[[str], bool]) -> bool:
        """Puts one more copy of `model` on the best worker, evicting evictable copies to make room."""
        candidates = [w for w in self.capable(model) if model not in self.hosted[w]]

        def preference(worker_id: str):
            tier = {r.name: r.tier for r in self.workers[worker_id].models}.get(model, "disk")
            return (tier == "disk", -self.free(worker_id), worker_id)

        for worker_id in sorted(candidates, key=preference):
            if self.sizes[model] <= self.free(worker_id) or self._make_room(worker_id, model, evictable):
                self.hosted[worker_id].add(model)
                return True
        return False

    def _make_room(self, worker_id: str, model: str, evictable: Callable[[str], bool]) -> bool:
        """Evicts evictable copies (largest first, so the fewest go) if that frees enough room."""
        others = sorted((m for m in self.hosted[worker_id] if evictable(m)), key=lambda m: (-self.sizes[m], m))
        if self.free(worker_id) + sum(self.sizes[m] for m in others) < self.sizes[model]:
            return False
        for victim in others:
            if self.sizes[model] <= self.free(worker_id):
                break
            self.hosted[worker_id].discard(victim)
        return True
