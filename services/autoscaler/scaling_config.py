"""Settings of the scaling planner (decide.py); every check names its field and says how to fix it."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class ScalingConfig:
    target_attainment: float = 0.9
    """SLO attainment the pool must keep; below it the planner adds a worker."""
    attainment_margin: float = 0.03
    """A worker is drained only while attainment >= target + margin (or unknown)."""
    fill: float = 0.8
    """Share of a GPU the planner fills with estimated demand before it wants another copy or worker."""
    low_water: float = 0.7
    """Hysteresis: a copy or worker goes only when demand fits the smaller count at fill * low_water."""
    pin_share: float = 0.25
    """A model whose demand per copy is at least this share of a GPU is pinned where it is placed;
    it is unpinned below pin_share * low_water."""
    cold_after_s: float = 60.0
    """A model with no arrivals and nothing in flight for this long is cold: it keeps one copy at most
    and its copy gives way to any active model."""
    cooldown_s: float = 30.0
    """Least time between removing a model's copies, and between a scale event and the next drain."""
    scale_up_cooldown_s: float = 15.0
    """Least time between two scale-ups (a worker asked for takes time to come up)."""
    drain_grace_s: float = 30.0
    """A draining worker's requests may finish where they are for this long; then they move."""
    min_workers: int = 1
    max_workers: int = 64

    def __post_init__(self):
        def check(name: str, ok: bool, hint: str) -> None:
            value = getattr(self, name)
            if isinstance(value, float) and not math.isfinite(value):
                ok = False
            if not ok:
                raise ValueError(f"{name}={value!r}: {hint}")

        check("target_attainment", 0 < self.target_attainment <= 1, "must be in (0, 1]; 0.9 is a good value")
        check("attainment_margin", 0 <= self.attainment_margin < 1, "must be in [0, 1); 0.03 is a good value")
        check("fill", 0 < self.fill <= 1, "must be in (0, 1]: the share of a GPU to fill; 0.8 is a good value")
        check("low_water", 0 < self.low_water < 1, "must be in (0, 1) so scaling down lags scaling up; 0.7 is good")
        check("pin_share", 0 < self.pin_share <= 1, "must be in (0, 1]; 0.25 is a good value")
        for name in ("cold_after_s", "cooldown_s", "scale_up_cooldown_s", "drain_grace_s"):
            check(name, getattr(self, name) >= 0, "must be >= 0 seconds")
        check("min_workers", self.min_workers >= 1, "must be >= 1: the pool keeps at least one worker")
        check("max_workers", self.max_workers >= self.min_workers, f"must be >= min_workers ({self.min_workers})")
