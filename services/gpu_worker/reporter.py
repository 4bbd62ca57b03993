"""WorkerState from the engine thread's latest snapshot: plain data in, the message out."""

from __future__ import annotations

from collections.abc import Mapping

from services.gpu_worker.engine.residency import Tier
from services.gpu_worker.commands import ModelShape, Snapshot
from shared.protocol import ModelResidency, WorkerState


def worker_state(
    worker_id: str,
    serving: list[str],
    device: str,
    snapshot: Snapshot | None,
    accepting: bool,
    seq: int,
    now: float,
    max_running: int = 0,
    queued: Mapping[str, str] | None = None,
) -> WorkerState:
    """`accepting` is False while the worker drains; it is then never ready, whatever the engine says.
    `queued`: requests (id -> model) handed to the engine thread that its snapshot does not show
    yet; they are reported as running too. A step can take seconds (a long prefill on a busy
    CPU), and a router that saw several reports without a request it assigned would count it
    lost and assign it again."""
    if snapshot is None:  # the engine thread has not built the engine yet
        models = tuple(ModelResidency(m, Tier.DISK.value) for m in serving)
        return WorkerState(worker_id, False, tuple(serving), models, None, (), 0, 0, device, seq, now,
                           max_running=max_running)
    stats = snapshot.stats
    shapes = dict(snapshot.shapes)
    models = tuple(_residency(m, stats.models.get(m, Tier.DISK.value), shapes.get(m)) for m in serving)
    shown = set(snapshot.running)
    extra = [(r, m) for r, m in (queued or {}).items() if r not in shown]
    return WorkerState(
        worker_id=worker_id,
        ready=snapshot.ready and accepting,
        serving=tuple(serving),
        models=models,
        active_model=stats.active,
        running=snapshot.running + tuple(r for r, _ in extra),
        free_kv_pages=stats.free_pages,
        total_kv_pages=stats.total_pages,
        device=device,
        seq=seq,
        ts=now,
        turn_id=snapshot.turn_id,
        running_models=snapshot.running_models + tuple(m for _, m in extra),
        max_running=max_running,
    )


def _residency(name: str, tier: str, shape: ModelShape | None) -> ModelResidency:
    if shape is None:
        return ModelResidency(name, tier)
    return ModelResidency(name, tier, shape.block_tokens, shape.weight_bytes, shape.host_bytes)
