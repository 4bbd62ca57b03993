"""The autoscaler's settings (the planner's own are in scaling_config.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from services.autoscaler.scaling_config import ScalingConfig


@dataclass(frozen=True)
class AutoscalerConfig:
    nats: str
    """NATS server URL(s), comma-separated."""
    catalog: Path
    """The model catalog (TOML): the models to place; their sizes come from their safetensors headers."""
    interval_s: float = 2.0
    """How often the planner runs (the placement is written only when it changes)."""
    host_budget_bytes: int = 8 << 30
    """Host memory each worker may fill with model weights."""
    gpu_budget_bytes: int = 80 << 30
    """Device memory a worker has for weights: a model bigger than this is placed nowhere."""
    worker_timeout_s: float = 2.0
    """A worker (or router) whose last report is older than this is not live."""
    window_s: float = 60.0
    """Arrivals and requested tokens are counted over this sliding window."""
    initial_workers: int = 0
    """Workers the connector starts when the autoscaler starts (with a connector only)."""
    boot_timeout_s: float = 120.0
    """A worker the connector started counts as coming up (no second scale-up for it) this long."""
    scaling: ScalingConfig = field(default_factory=ScalingConfig)

    def __post_init__(self):
        if not self.nats:
            raise ValueError("nats: give a NATS URL such as nats://127.0.0.1:4222")
        for name, hint in (("interval_s", "2 is a good value"), ("worker_timeout_s", "workers report every 0.5 s; 2 is good"),
                           ("window_s", "60 is a good value"), ("boot_timeout_s", "120 is a good value")):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}={getattr(self, name)!r} must be > 0 seconds ({hint})")
        if self.host_budget_bytes <= 0:
            raise ValueError("host_budget_bytes must be > 0: the host memory a worker may give to weights")
        if self.gpu_budget_bytes <= 0:
            raise ValueError("gpu_budget_bytes must be > 0: the device memory a worker has for weights")
        if self.initial_workers < 0:
            raise ValueError(f"initial_workers={self.initial_workers} must be >= 0")
