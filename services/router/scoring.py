"""Choosing a worker for a request: filter -> scorers -> picker.

Each scorer maps (worker, model) to [0, 1]; the picker takes the highest weighted sum,
then the least loaded worker, then the smallest worker id.
"""

from __future__ import annotations

from collections.abc import Iterable

from services.router.config import DEFAULT_SLOTS, PolicyConfig
from services.router.views import WorkerView

WARMTH = {"active": 1.0, "device": 0.8, "host": 0.5, "disk": 0.0}


def slots(view: WorkerView, config: PolicyConfig) -> int:
    """Requests the worker may hold: the router's setting, else the worker's own word."""
    return config.max_running_per_worker or view.max_running or DEFAULT_SLOTS


def can_take(view: WorkerView, model: str, config: PolicyConfig) -> bool:
    """The filter: the worker serves the model, is ready, not being drained and has a free slot."""
    return view.ready and not view.drained and model in view.serving and view.load < slots(view, config)


def warmth(view: WorkerView, model: str, config: PolicyConfig) -> float:
    if view.active_model == model:
        return WARMTH["active"]
    return WARMTH.get(view.tiers.get(model, "disk"), 0.0)


def free_slots(view: WorkerView, model: str, config: PolicyConfig) -> float:
    return max(0.0, 1.0 - view.load / slots(view, config))


def kv_headroom(view: WorkerView, model: str, config: PolicyConfig) -> float:
    if view.total_kv_pages <= 0:
        return 0.0
    return min(1.0, max(0.0, view.free_kv_pages / view.total_kv_pages))


def score(view: WorkerView, model: str, config: PolicyConfig) -> float:
    w = config.weights
    return (
        w.warmth * warmth(view, model, config)
        + w.load * free_slots(view, model, config)
        + w.kv_headroom * kv_headroom(view, model, config)
    )


def pick(views: Iterable[WorkerView], model: str, config: PolicyConfig) -> WorkerView | None:
    candidates = [v for v in views if can_take(v, model, config)]
    if not candidates:
        return None
    return min(candidates, key=lambda v: (-round(score(v, model, config), 9), v.load, v.worker_id))
