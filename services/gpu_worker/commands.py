"""What asyncio and the engine thread hand each other: commands in, outboxes out."""

from __future__ import annotations

from dataclasses import dataclass

from services.gpu_worker.engine.engine import EngineStats
from shared.protocol import AssignRequest, RunTurn, TokenChunk, TurnReport


# ---- commands (asyncio -> thread) ---------------------------------------------------


@dataclass(frozen=True)
class Assign:
    msg: AssignRequest
    headers: dict | None = None
    """NATS headers of the command, carrying the W3C trace context."""


@dataclass(frozen=True)
class Turn:
    """Run the router's turn; it replaces a running one at the next step boundary."""

    msg: RunTurn
    headers: dict | None = None
    """NATS headers of the command, carrying the W3C trace context."""


@dataclass(frozen=True)
class Cancel:
    request_id: str


@dataclass(frozen=True)
class Prefetch:
    model: str


@dataclass(frozen=True)
class Place:
    """The models the autoscaler placed on this worker: they stay in host memory; the pinned
    ones also stay on the device once there (the arena evicts them last)."""

    models: frozenset[str]
    pinned: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Stop:
    """Ends the loop; requests still held are released silently so that the router moves them."""


Command = Assign | Turn | Cancel | Prefetch | Place | Stop


# ---- results (thread -> asyncio) ----------------------------------------------------


@dataclass(frozen=True)
class ModelShape:
    """What the router needs of a served model to plan its KV and its switches."""

    block_tokens: int
    """Tokens one KV page holds for this model."""
    weight_bytes: int
    host_bytes: int = 0
    """Host memory the model takes when loaded (weights, plus packed copies on a CPU engine)."""


@dataclass(frozen=True)
class Snapshot:
    ready: bool
    stats: EngineStats
    running: tuple[str, ...]
    turn_id: int = 0
    """The turn being run; 0 when none is."""
    shapes: tuple[tuple[str, ModelShape], ...] = ()
    """(model, shape) for each served model."""
    running_models: tuple[str, ...] = ()
    """The model of each request in `running`."""
    applied: int = 0
    """How many commands the thread had applied (EngineThread.submit numbers them from 1)."""


@dataclass(frozen=True)
class Outbox:
    chunks: tuple[tuple[str, TokenChunk], ...] = ()
    """(subject, chunk) in publishing order."""
    snapshot: Snapshot | None = None
    changed: bool = False
    """A request arrived or ended, or the active model or a model's tier changed."""
    fatal: str | None = None
    """Set when the thread cannot go on (the engine could not be built or preloaded)."""
    reports: tuple[TurnReport, ...] = ()
    """Turns that ended, in order; published after this outbox's chunks."""
