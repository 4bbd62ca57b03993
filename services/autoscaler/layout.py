"""Which models each kept worker holds in host memory, given how many copies each model wants.

Rules, in order: a worker holds only models it serves that fit its host and GPU memory; what
it held before stays unless a model has more copies than it wants (the most loaded holder
gives its copy up); missing copies go to the least loaded capable worker, evicting cold or
surplus copies to make room; cold models (want 0) keep the copy they have and, when some worker
has room to spare, get one (so a later burst finds them in host memory)."""

from __future__ import annotations

from collections.abc import Mapping

from services.autoscaler.tick import WorkerInput


class Layout:
    def __init__(self, workers: Mapping[str, WorkerInput], sizes: Mapping[str, int],
                 want: Mapping[str, int], share: Mapping[str, float]):
        self.workers = workers
        self.sizes = sizes
        self.want = want
        self.share = share
        self.hosted: dict[str, set[str]] = {w: set() for w in workers}

    def can_hold(self, worker_id: str, model: str) -> bool:
        w, size = self.workers[worker_id], self.sizes[model]
        return model in w.serving and size <= w.host_bytes and size <= w.gpu_bytes

    def capable(self, model: str) -> list[str]:
        return [w for w in self.workers if self.can_hold(w, model)]

    def copies(self, model: str) -> int:
        return sum(model in models for models in self.hosted.values())

    def free(self, worker_id: str) -> int:
        return self.workers[worker_id].host_bytes - sum(self.sizes[m] for m in self.hosted[worker_id])

    def load(self, worker_id: str) -> float:
        return sum(self.share[m] / max(1, self.want[m]) for m in self.hosted[worker_id])

    def result(self) -> dict[str, frozenset[str]]:
        return {w: frozenset(models) for w, models in self.hosted.items()}


def lay_out(workers: Mapping[str, WorkerInput], previous: Mapping[str, frozenset[str]], sizes: Mapping[str, int],
            want: Mapping[str, int], share: Mapping[str, float], warmth: Mapping[str, float]) -> dict[str, frozenset[str]]:
    """`warmth` orders models hottest first (a larger value is hotter); ties by name."""
    layout = Layout(workers, sizes, want, share)
    order = sorted(sizes, key=lambda m: (-want[m], -share[m], -warmth.get(m, float("-inf")), m))
    for worker_id, w in workers.items():
        before = previous[worker_id] if worker_id in previous else frozenset(w.resident)
        for model in order:
            if model in before and layout.can_hold(worker_id, model) and sizes[model] <= layout.free(worker_id):
                layout.hosted[worker_id].add(model)
    for model in order:
        for worker_id in sorted(layout.capable(model), key=lambda w: (-layout.load(w), w)):
            if layout.copies(model) <= max(1, want[model]):
                break
            layout.hosted[worker_id].discard(model)
    for model in order:
        while layout.copies(model) < min(want[model], len(layout.capable(model))) and _add(layout, model, order):
            pass
    for model in order:
        if want[model] == 0 and layout.copies(model) == 0:
            room = [w for w in layout.capable(model) if sizes[model] <= layout.free(w)]
            if room:
                layout.hosted[min(room, key=lambda w: (-layout.free(w), w))].add(model)
    return layout.result()


def _add(layout: Layout, model: str, order: list[str]) -> bool:
    """One more copy of `model` on the least loaded capable worker that has or can make room."""
    coldest_first = {m: i for i, m in enumerate(reversed(order))}

    def evictable(m: str) -> bool:
        return layout.want[m] == 0 or layout.copies(m) > layout.want[m]

    candidates = [w for w in layout.capable(model) if model not in layout.hosted[w]]
    for worker_id in sorted(candidates, key=lambda w: (layout.load(w), -layout.free(w), w)):
        victims = sorted((m for m in layout.hosted[worker_id] if evictable(m)), key=lambda m: coldest_first[m])
        if layout.free(worker_id) + sum(layout.sizes[m] for m in victims) < layout.sizes[model]:
            continue
        for victim in victims:
            if layout.sizes[model] <= layout.free(worker_id):
                break
            layout.hosted[worker_id].discard(victim)
        layout.hosted[worker_id].add(model)
        return True
    return False
