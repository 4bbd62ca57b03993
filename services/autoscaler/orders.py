"""The planner's state as the Placement the router and the workers read from the KV bucket,
and the PlannerState itself as bytes (kept in the same bucket, so a restarted autoscaler
resumes where it stopped). Pure."""

from __future__ import annotations

import math

import msgpack

from services.autoscaler.actions import RequestFate
from services.autoscaler.tick import PlannerState
from shared.protocol import DrainOrder, Placement, RequestMove, WorkerPlacement

STATE_KEY = "planner-state"
STATE_VERSION = 1


def placement_of(state: PlannerState, previous: Placement | None, now: float) -> Placement:
    """The Placement `state` orders; `previous` itself when it orders the same (epochs count changes)."""
    workers = tuple(WorkerPlacement(w, tuple(sorted(models))) for w, models in sorted(state.placement.items()))
    pinned: dict[str, list[str]] = {}
    for worker_id, model in sorted(state.pins):
        pinned.setdefault(worker_id, []).append(model)
    pins = tuple(WorkerPlacement(w, tuple(models)) for w, models in pinned.items())
    drains = tuple(
        DrainOrder(w, tuple(RequestMove(f.request_id, f.to_worker if f.fate == "move" else "") for f in state.fates.get(w, ())))
        for w in sorted(state.draining)
    )
    if previous is not None and (previous.workers, previous.pins, previous.drains) == (workers, pins, drains):
        return previous
    return Placement((previous.epoch if previous else 0) + 1, workers, now, pins, drains)


def encode_state(state: PlannerState) -> bytes:
    return msgpack.packb({
        "version": STATE_VERSION,
        "placement": {w: sorted(models) for w, models in state.placement.items()},
        "pins": sorted(state.pins),
        "draining": dict(state.draining),
        "fates": {w: [[f.request_id, f.model, f.fate, f.to_worker] for f in fates] for w, fates in state.fates.items()},
        "released": dict(state.released),
        "last_active": dict(state.last_active),
        "copies_justified_at": dict(state.copies_justified_at),
        "started_at": state.started_at,
        "scaled_up_at": _finite(state.scaled_up_at),
        "scaled_down_at": _finite(state.scaled_down_at),
    }, use_bin_type=True)


def decode_state(data: bytes) -> PlannerState:
    """ValueError naming the problem when `data` is not a planner state this version wrote."""
    try:
        d = msgpack.unpackb(data, raw=False, strict_map_key=False)
    except Exception as e:
        raise ValueError(f"stored planner state is not msgpack ({e})") from None
    if not isinstance(d, dict) or d.get("version") != STATE_VERSION:
        version = d.get("version") if isinstance(d, dict) else None
        raise ValueError(f"stored planner state has version {version!r}; this autoscaler reads {STATE_VERSION}")
    try:
        return PlannerState(
            placement={w: frozenset(models) for w, models in d["placement"].items()},
            pins=frozenset((w, m) for w, m in d["pins"]),
            draining={w: float(t) for w, t in d["draining"].items()},
            fates={w: tuple(RequestFate(*f) for f in fates) for w, fates in d["fates"].items()},
            released={w: float(t) for w, t in d["released"].items()},
            last_active={m: float(t) for m, t in d["last_active"].items()},
            copies_justified_at={m: float(t) for m, t in d["copies_justified_at"].items()},
            started_at=d["started_at"],
            scaled_up_at=_infinite(d["scaled_up_at"]),
            scaled_down_at=_infinite(d["scaled_down_at"]),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise ValueError(f"stored planner state is malformed ({type(e).__name__}: {e})") from None


def _finite(t: float) -> float | None:
    return t if math.isfinite(t) else None


def _infinite(t: float | None) -> float:
    return -math.inf if t is None else float(t)
