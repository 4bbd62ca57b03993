"""Plain messages for router tests."""

from __future__ import annotations

from shared import subjects
from shared.protocol import GenerateRequest, ModelResidency, Sampling, TokenChunk, WorkerState

MODELS = ("a", "b", "c")


def request(rid: str, model: str = "a", max_tokens: int = 16, tenant: str = "") -> GenerateRequest:
    return GenerateRequest(rid, model, (1, 2, 3), Sampling(max_tokens=max_tokens), subjects.tokens(rid), tenant=tenant)


def state(
    worker_id: str,
    seq: int,
    serving: tuple[str, ...] = MODELS,
    running: tuple[str, ...] = (),
    tiers: dict[str, str] | None = None,
    active: str | None = None,
    ready: bool = True,
    free: int = 100,
    total: int = 100,
    ts: float | None = None,
    block_tokens: int = 0,
    turn_id: int = 0,
    max_running: int = 0,
    weight_bytes: int = 0,
) -> WorkerState:
    """`weight_bytes`: every model's, those without a tier listed as on disk."""
    tiers = tiers or ({m: "disk" for m in serving} if weight_bytes else {})
    models = tuple(ModelResidency(m, t, block_tokens, weight_bytes) for m, t in tiers.items())
    return WorkerState(
        worker_id, ready, serving, models, active, running, free, total, "cpu", seq, float(seq) if ts is None else ts, turn_id,
        max_running=max_running,
    )


def tokens(rid: str, index: int, ids: tuple[int, ...], worker: str = "", finish: str | None = None) -> TokenChunk:
    return TokenChunk(rid, index, ids, finish_reason=finish, worker_id=worker)
