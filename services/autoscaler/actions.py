"""What decide() asks the world to do; each tick lists only changes."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Place:
    """Keep `model` in `worker_id`'s host memory (reason: placed, replica or moved)."""

    model: str
    worker_id: str
    reason: str


@dataclass(frozen=True)
class Evict:
    model: str
    worker_id: str
    reason: str


@dataclass(frozen=True)
class Pin:
    """Keep a hot model resident on the worker's GPU (the router should not switch it out)."""

    model: str
    worker_id: str


@dataclass(frozen=True)
class Unpin:
    model: str
    worker_id: str


@dataclass(frozen=True)
class RequestFate:
    """A draining worker's request: `finish` where it runs, or `move` to `to_worker`."""

    request_id: str
    model: str
    fate: str
    to_worker: str | None = None


@dataclass(frozen=True)
class Drain:
    """Stop sending `worker_id` new requests; its models are placed elsewhere; `requests` says
    what becomes of each one it holds. Announced again whenever a fate changes."""

    worker_id: str
    requests: tuple[RequestFate, ...]


@dataclass(frozen=True)
class Undrain:
    worker_id: str


@dataclass(frozen=True)
class Release:
    """Give the worker back: it holds no request (reason: drained) or it stopped reporting (gone)."""

    worker_id: str
    reason: str


@dataclass(frozen=True)
class ScaleUp:
    count: int
    reason: str


Action = Place | Evict | Pin | Unpin | Drain | Undrain | Release | ScaleUp
