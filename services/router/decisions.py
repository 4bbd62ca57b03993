"""What the router policy asks its host to do: plain frozen data, executed by the service
(or by a simulator)."""

from __future__ import annotations

from dataclasses import dataclass

from shared.protocol import ErrorInfo, GenerateRequest, RunTurn


@dataclass(frozen=True)
class Assign:
    """Send AssignRequest(request, resume_token_ids, kv_handoff) to the worker."""

    worker_id: str
    request: GenerateRequest
    resume_token_ids: tuple[int, ...] = ()
    kv_handoff: str = ""


@dataclass(frozen=True)
class Reject:
    """Publish an error TokenChunk at `index` on the request's token subject; the request is
    finished (ack it). `index` is the count of tokens the client may already have."""

    request: GenerateRequest
    error: ErrorInfo
    index: int = 0


@dataclass(frozen=True)
class Cancel:
    """Send CancelAssignment(request_id) to the worker."""

    worker_id: str
    request_id: str


@dataclass(frozen=True)
class Done:
    """The request is finished (completed, failed on its worker, or cancelled): ack it."""

    request_id: str


@dataclass(frozen=True)
class StartTurn:
    """Send the RunTurn to the worker: it replaces whatever turn the worker runs."""

    worker_id: str
    turn: RunTurn


Decision = Assign | Reject | Cancel | Done | StartTurn


def not_found(model: str, known: list[str]) -> ErrorInfo:
    return ErrorInfo(404, "model_not_found", f"model {model!r} does not exist; available: {', '.join(known)}")


def queue_full(model: str, limit: int) -> ErrorInfo:
    return ErrorInfo(429, "queue_full", f"model {model!r} has {limit} requests waiting; retry later")


def no_worker(model: str) -> ErrorInfo:
    return ErrorInfo(503, "no_worker", f"no live worker serves model {model!r}; retry later")
