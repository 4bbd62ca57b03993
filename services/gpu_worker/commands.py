"""What asyncio and the engine thread hand each other: commands in, outboxes out."""

from __future__ import annotations

from dataclasses import dataclass

from services.gpu_worker.engine.engine import EngineStats
from shared.protocol import AssignRequest, TokenChunk


# ---- commands (asyncio -> thread) ---------------------------------------------------


@dataclass(frozen=True)
class Assign:
    msg: AssignRequest
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
    """The models the autoscaler placed on this worker: they stay in host memory."""

    models: frozenset[str]


@dataclass(frozen=True)
class Stop:
    """Ends the loop; requests still held are released silently so that the router moves them."""


Command = Assign | Cancel | Prefetch | Place | Stop


# ---- results (thread -> asyncio) ----------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    ready: bool
    stats: EngineStats
    running: tuple[str, ...]


@dataclass(frozen=True)
class Outbox:
    chunks: tuple[tuple[str, TokenChunk], ...] = ()
    """(subject, chunk) in publishing order."""
    snapshot: Snapshot | None = None
    changed: bool = False
    """A request arrived or ended, or the active model or a model's tier changed."""
    fatal: str | None = None
    """Set when the thread cannot go on (the engine could not be built or preloaded)."""
