"""What the scaling planner reads each tick (TickInput) and carries to the next (PlannerState).
Plain data: an adapter fills a TickInput from worker and router reports, a test writes one by hand."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ModelInput:
    name: str
    bytes: int
    """Weight bytes: what a worker's host and GPU memory must hold (the checkpoint's size, or
    more where a worker reported the model taking more host memory)."""
    arrivals: int = 0
    """Requests that arrived during the tick's window."""
    tokens: int = 0
    """Output tokens those requests asked for (their max_tokens)."""
    in_flight: int = 0
    """Requests queued or running now."""
    decode_step_s: float = 0.02
    """A decode step's fixed time (batch of one) on a worker's GPU."""
    token_s: float = 0.0
    """What each further token of a batched decode step adds."""
    tbt_s: float = 0.1
    """The model's time-between-tokens objective."""
    share: float | None = None
    """A GPU share measured elsewhere (request-level: the GPU time its turns took, plus its
    backlog); when given it replaces the token-paced estimate of demand.py."""

    def __post_init__(self):
        for name in ("bytes", "arrivals", "tokens", "in_flight"):
            if getattr(self, name) < 0:
                raise ValueError(f"model {self.name}: {name}={getattr(self, name)} must be >= 0")
        if not self.decode_step_s > 0 or not self.tbt_s > 0 or self.token_s < 0:
            raise ValueError(f"model {self.name}: decode_step_s and tbt_s must be > 0, token_s >= 0")
        if self.share is not None and not self.share >= 0:
            raise ValueError(f"model {self.name}: share={self.share!r} must be >= 0 (a share of one GPU)")


@dataclass(frozen=True)
class InFlight:
    request_id: str
    model: str


@dataclass(frozen=True)
class WorkerInput:
    worker_id: str
    live: bool
    serving: tuple[str, ...]
    """Models this worker can load."""
    host_bytes: int
    """Host memory it may fill with weights."""
    gpu_bytes: int
    """GPU memory for weights: a model bigger than this cannot run on it."""
    resident: tuple[str, ...] = ()
    """Models in its host or GPU memory now."""
    in_flight: tuple[InFlight, ...] = ()


@dataclass(frozen=True)
class TickInput:
    now: float
    window_s: float
    """The span the models' arrivals and tokens were counted over."""
    models: tuple[ModelInput, ...]
    workers: tuple[WorkerInput, ...]
    attainment: float | None = None
    """Pool SLO attainment over the recent window; None when no request finished in it."""

    def __post_init__(self):
        if not self.window_s > 0:
            raise ValueError(f"window_s={self.window_s!r} must be > 0 seconds")
        if self.attainment is not None and not 0 <= self.attainment <= 1:
            raise ValueError(f"attainment={self.attainment!r} must be in [0, 1] or None")
        for kind, names in (("model", [m.name for m in self.models]), ("worker", [w.worker_id for w in self.workers])):
            if len(set(names)) != len(names):
                raise ValueError(f"duplicate {kind} names in the tick: {sorted(n for n in set(names) if names.count(n) > 1)}")


@dataclass(frozen=True)
class PlannerState:
    """Everything decide() remembers. Mappings are never mutated: each tick builds new ones."""

    placement: Mapping[str, frozenset[str]] = field(default_factory=dict)
    """worker -> models it keeps in host memory."""
    pins: frozenset[tuple[str, str]] = frozenset()
    """(worker, model) kept resident on that worker's GPU."""
    draining: Mapping[str, float] = field(default_factory=dict)
    """worker -> when its drain began."""
    fates: Mapping[str, tuple] = field(default_factory=dict)
    """worker -> the RequestFates last announced for its drain."""
    released: Mapping[str, float] = field(default_factory=dict)
    """worker -> when it was released (ignored while it still reports)."""
    last_active: Mapping[str, float] = field(default_factory=dict)
    """model -> last tick it had arrivals or requests in flight."""
    copies_justified_at: Mapping[str, float] = field(default_factory=dict)
    """model -> last tick its demand justified the copies it had (or their count changed)."""
    started_at: float | None = None
    """The first tick: no drain before cooldown_s of demand has been seen."""
    scaled_up_at: float = -math.inf
    scaled_down_at: float = -math.inf
