"""How many torch threads a CPU engine gets (no torch import: `tokenpool up` asks before starting anything)."""

from __future__ import annotations


def cpu_engine_threads(cores: int | None, workers: int = 1) -> int:
    """Every core but one, shared among the machine's `workers` engines: the workers' own
    publishers and the services beside them need that core, and an engine with a torch thread on
    every core stalls whenever another process runs (bench/README.md, "Torch, 8 streams")."""
    return max(1, ((cores or 1) - 1) // max(1, workers))
