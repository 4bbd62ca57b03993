"""Which model the engine computes next: round robin over the models with work.

A model keeps the engine for at least `min_turn_steps` steps while others wait (a switch
costs a weight copy and maybe a KV swap, so one step per turn would waste the device),
then the next model in name order with work gets its turn. Plain data in, a decision out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Turn:
    model: str | None
    """The model whose turn it is; None while no model has work."""
    steps: int = 0
    """Steps this model has taken in the current turn."""


@dataclass(frozen=True)
class Decision:
    model: str | None
    """The model to step now; None when there is no work."""
    switch: bool
    """Whether `model` differs from the model that held the turn."""
    prefetch: str | None
    """The model whose turn comes next, if another one has work."""


def decide(with_work: Sequence[str], turn: Turn, min_turn_steps: int) -> Decision:
    ring = sorted(set(with_work))
    if not ring:
        return Decision(None, False, None)
    current = turn.model
    if current in ring and (turn.steps < min_turn_steps or len(ring) == 1):
        model = current
    else:
        model = _after(ring, current)
    following = _after(ring, model)
    return Decision(model, model != current, following if following != model else None)


def advance(turn: Turn, decision: Decision) -> Turn:
    """The turn after the engine stepped `decision.model` once."""
    if decision.model is None:
        return turn
    return Turn(decision.model, 1 if decision.switch else turn.steps + 1)


def _after(ring: list[str], model: str | None) -> str:
    """The first model of the ring that comes after `model` in name order, wrapping around."""
    if model is None:
        return ring[0]
    return next((m for m in ring if m > model), ring[0])


def should_swap_out(previous_kv_pages: int, free_pages: int, pages_wanted: int) -> bool:
    """Whether to park the previous model's KV in host memory before the next model runs.

    Only when the next model wants more pages than are free: swapping costs two copies,
    and KV left on the device makes switching back free.
    """
    return previous_kv_pages > 0 and pages_wanted > free_pages
