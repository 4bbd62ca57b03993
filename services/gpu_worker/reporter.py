"""WorkerState from the engine thread's latest snapshot: plain data in, the message out."""

from __future__ import annotations

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
) -> WorkerState:
    """`accepting` is False while the worker drains; it is then never ready, whatever the engine says."""
    if snapshot is None:  # the engine thread has not built the engine yet
        models = tuple(ModelResidency(m, Tier.DISK.value) for m in serving)
        return WorkerState(worker_id, False, tuple(serving), models, None, (), 0, 0, device, seq, now,
                           max_running=max_running)
    stats = snapshot.stats
    shapes = dict(snapshot.shapes)
    models = tuple(_residency(m, stats.models.get(m, Tier.DISK.value), shapes.get(m)) for m in serving)
    return WorkerState(
        worker_id=worker_id,
        ready=snapshot.ready and accepting,
        serving=tuple(serving),
        models=models,
        active_model=stats.active,
        running=snapshot.running,
        free_kv_pages=stats.free_pages,
        total_kv_pages=stats.total_pages,
        device=device,
        seq=seq,
        ts=now,
        turn_id=snapshot.turn_id,
        running_models=snapshot.running_models,
        max_running=max_running,
    )


def _residency(name: str, tier: str, shape: ModelShape | None) -> ModelResidency:
    if shape is None:
        return ModelResidency(name, tier)
    return ModelResidency(name, tier, shape.block_tokens, shape.weight_bytes, shape.host_bytes)
