"""What every connector offers the autoscaler: start workers, release one, list its own."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol


class ConnectorError(RuntimeError):
    """A worker could not be started or released; the message names the command and its output.

    `started` lists the workers a failed start() brought up anyway (they run and are tracked)."""

    def __init__(self, message: str, started: list[str] | None = None):
        super().__init__(message)
        self.started = list(started or [])


class Connector(Protocol):
    name: str

    async def start(self, count: int) -> list[str]:
        """Starts `count` new workers; returns their ids, as each reports in its WorkerState."""
        ...

    async def release(self, worker_id: str) -> None:
        """Stops the worker gracefully: SIGTERM drains it, SIGKILL follows after the grace period."""
        ...

    def workers(self) -> list[str]:
        """Workers this connector started that are still up, in start order."""
        ...

    def reserve(self, worker_ids: Iterable[str]) -> None:
        """Ids a restarted autoscaler remembers from its state: never give them to a new worker."""
        ...

    async def close(self) -> None:
        """On the autoscaler's shutdown: releases what must not outlive it."""
        ...


def check_count(count: int) -> None:
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"count must be a whole number >= 1, got {count!r}")


def log_tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])
