"""The autoscaler's settings."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class AutoscalerConfig:
    nats: str
    """NATS server URL(s), comma-separated."""
    catalog: Path
    """The model catalog (TOML): the models to place; their sizes come from their safetensors headers."""
    interval_s: float = 2.0
    """How often the placement is planned again (it is written only when it changes)."""
    host_budget_bytes: int = 8 << 30
    """Host memory each worker may fill with model weights."""
    worker_timeout_s: float = 2.0
    """A worker (or router) whose last report is older than this is left out of the plan."""

    def __post_init__(self):
        if not self.nats:
            raise ValueError("nats: give a NATS URL such as nats://127.0.0.1:4222")
        if self.interval_s <= 0:
            raise ValueError("interval_s must be > 0 (2 is a good value)")
        if self.host_budget_bytes <= 0:
            raise ValueError("host_budget_bytes must be > 0: the host memory a worker may give to weights")
        if self.worker_timeout_s <= 0:
            raise ValueError("worker_timeout_s must be > 0 (workers report every 0.5 s; 2.0 is a good value)")
