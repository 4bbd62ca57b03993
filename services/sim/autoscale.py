"""The autoscaler's planner (services/autoscaler/decide.py) inside the simulator: its settings
there, what it reads from the simulation each tick, and the GPUs it keeps over time. Pure: data
in, data out; services/sim/autoscale_driver.py does the stepping.

    config = AutoscaleConfig()                      # sim_scaling(), a decide() tick every 5 s
    run = simulate(workload, SimConfig(gpus=1, scheduling="token", autoscale=config))
    run.summary()["gpu_hours"], run.gpus_over_time  # [(t, GPUs in use from t on), ...]

Both pooled policies run the same decide(); only the GPU share a model is estimated to need
differs (model_inputs): token-level shares a GPU between models in SLO-sized turns, so a model
needs its decode steps' share of each TBT (services/autoscaler/demand.py); request-level runs
one model at a time on a GPU, so a model needs the GPU time its turns take (model_inputs).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from services.autoscaler.scaling_config import ScalingConfig
from services.autoscaler.tick import ModelInput
from services.sim.cost import CostModel
from services.sim.errors import SimError

TYPICAL_CONTEXT_TOKENS = 1000
"""Context per sequence the step estimates assume (as run.policy_config's priors do)."""

BOOT_S = 45.0
"""From a ScaleUp to the new worker's first report: starting the gpu_worker process (Python,
torch and CUDA initialization, some 10-15 s) and reading the first model's weights from local
disk into host memory (15-26 GB of bf16 7B-13B weights at 1-2 GB/s, another 10-25 s). An
estimate, not a measurement; --boot-delay changes it."""

HOST_BYTES = 256 * 10**9
"""Host memory a worker may fill with weights: a DGX H100's 2 TB of DRAM over its 8 GPUs."""


def sim_scaling_defaults(day_target: float = 0.9) -> dict:
    """Where the simulator's planner settings differ from ScalingConfig's defaults, for a run
    judged on `day_target` attainment over all its requests:
    - scale_up_cooldown_s 60 (default 15): longer than BOOT_S, so that a pool short of GPUs asks
      for one at a time and sees it come up before asking again; with 15 s, attainment (measured
      over the router's last 60 s) stays low through a boot and three workers come for one;
    - target_attainment day_target + 0.05 (default 0.9): the planner acts on the last minute's
      attainment, while the run is judged on every request's; a minute-by-minute floor at the
      run's own target lets the dips before each scale-up pull the whole below it."""
    return {"scale_up_cooldown_s": 60.0, "target_attainment": min(1.0, day_target + 0.05)}


def sim_scaling(day_target: float = 0.9, **overrides) -> ScalingConfig:
    return ScalingConfig(**(sim_scaling_defaults(day_target) | overrides))


@dataclass(frozen=True)
class AutoscaleConfig:
    scaling: ScalingConfig = field(default_factory=sim_scaling)
    tick_s: float = 5.0
    """Virtual seconds between decide() calls."""
    window_s: float = 60.0
    """The span arrivals and requested tokens are counted over (TickInput.window_s)."""
    bucket_s: float = 5.0
    """Width of the sliding window's buckets."""
    boot_s: float = BOOT_S
    host_bytes: int = HOST_BYTES

    def __post_init__(self):
        if not isinstance(self.scaling, ScalingConfig):
            raise SimError(f"autoscale scaling must be a ScalingConfig, got {type(self.scaling).__name__}")
        for name in ("tick_s", "window_s", "bucket_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise SimError(f"autoscale {name}={value!r} must be a positive number of seconds")
        if self.bucket_s > self.window_s:
            raise SimError(f"autoscale bucket_s={self.bucket_s} must be <= window_s={self.window_s}")
        if not (math.isfinite(self.boot_s) and self.boot_s >= 0):
            raise SimError(f"autoscale boot_s={self.boot_s!r} must be >= 0 seconds")
        if self.host_bytes <= 0:
            raise SimError(f"autoscale host_bytes={self.host_bytes!r} must be > 0")


@dataclass(frozen=True)
class ModelFacts:
    """What the cost model says of one model on the simulated GPU."""

    bytes: int
    step_s: float
    """A decode step of one sequence at TYPICAL_CONTEXT_TOKENS."""
    token_s: float
    """What each further sequence adds to a decode step."""
    switch_s: float
    """Copying its weights in from host memory, plus the fixed switch cost."""


def model_facts(cost: CostModel, models: list[str]) -> dict[str, ModelFacts]:
    out = {}
    for m in models:
        c = cost.models[m]
        step = cost.decode_step_s(m, 1, TYPICAL_CONTEXT_TOKENS)
        token = c.decode_per_seq_s + c.decode_per_context_token_s * TYPICAL_CONTEXT_TOKENS
        out[m] = ModelFacts(c.weight_bytes, step, token, cost.copy_in_s(c.weight_bytes) + cost.switch_fixed_s)
    return out


def model_inputs(
    scheduling: str,
    facts: Mapping[str, ModelFacts],
    counts: Mapping[str, tuple[int, int]],
    in_flight: Mapping[str, int],
    busy_s: Mapping[str, float],
    window_s: float,
    tbt_s: float,
) -> tuple[ModelInput, ...]:
    """Each model's TickInput entry. `counts`: model -> (arrivals, requested tokens) in the
    window; `busy_s`: model -> GPU seconds its turns took in the window (request-level only).

    token: the planner's own demand model (demand.py): while it has requests a model needs one
    decode step per TBT objective, plus token_s per token; the turns of many models share a GPU.
    request: a model runs alone on a GPU, its requests batched at full speed, and requests
    wait for their model's turn within their TTFT; so what a model needs is the GPU time its
    turns take (switch, prefill and decode), as the workers' TurnReports tell, plus what its
    requests in flight still need (in flight x the window's mean tokens per request x a
    batch-of-one step): (busy_s + backlog) / window_s. The GPU time alone could never show more
    demand than the pool has GPUs: a saturated pool would grow by one worker per
    scale_up_cooldown_s while its queues grew; the backlog shows how far behind it is.
    That share goes to the planner as ModelInput.share, which replaces demand.py's estimate."""
    out = []
    for name in sorted(facts):
        f = facts[name]
        arrivals, tokens = counts.get(name, (0, 0))
        if scheduling == "token":
            share = None
        elif scheduling == "request":
            backlog_s = in_flight.get(name, 0) * tokens / arrivals * f.step_s if arrivals else 0.0
            share = (busy_s.get(name, 0.0) + backlog_s) / window_s
        else:
            raise SimError(f"the autoscaler sizes the token and request pools, not {scheduling!r}")
        out.append(ModelInput(name, f.bytes, arrivals, tokens, in_flight.get(name, 0), f.step_s, f.token_s, tbt_s, share))
    return tuple(out)


class GpuLedger:
    """GPUs in use over time: a worker counts from when it is asked for until it is released.

    ledger.ask("gpu000", 0.0); ledger.ask("gpu001", 10.0); ledger.release("gpu001", 40.0)
    ledger.gpu_seconds(100.0)   # 100 + 30 = 130
    ledger.series               # [(0.0, 1), (10.0, 2), (40.0, 1)]
    """

    def __init__(self):
        self._asked: dict[str, float] = {}
        self._closed_s = 0.0
        self.series: list[tuple[float, int]] = []

    def ask(self, worker_id: str, now: float) -> None:
        if worker_id in self._asked:
            raise SimError(f"worker {worker_id} was asked for twice")
        self._asked[worker_id] = now
        self._record(now)

    def release(self, worker_id: str, now: float) -> None:
        asked = self._asked.pop(worker_id, None)
        if asked is None:
            raise SimError(f"worker {worker_id} released but never asked for (or released twice)")
        self._closed_s += now - asked
        self._record(now)

    @property
    def in_use(self) -> int:
        return len(self._asked)

    def gpu_seconds(self, now: float) -> float:
        return self._closed_s + sum(now - t for t in self._asked.values())

    def peak(self) -> int:
        return max((n for _, n in self.series), default=0)

    def _record(self, now: float) -> None:
        if self.series and self.series[-1][0] == now:
            self.series[-1] = (now, self.in_use)
        else:
            self.series.append((now, self.in_use))


def binned(series: list[tuple[float, int]], end_s: float, bin_s: float) -> dict:
    """A step series (t, GPUs from t on) as the mean and peak GPUs of each bin_s-long bin of [0, end_s)."""
    if not bin_s > 0:
        raise SimError(f"bin_s={bin_s!r} must be > 0")
    bins = max(1, math.ceil(end_s / bin_s))
    area, peak = [0.0] * bins, [0] * bins
    for i, (t, n) in enumerate(series):
        lo = max(t, 0.0)
        hi = min(series[i + 1][0] if i + 1 < len(series) else end_s, end_s)
        b = int(lo // bin_s)
        while b < bins and b * bin_s < hi:
            area[b] += (min(hi, (b + 1) * bin_s) - max(lo, b * bin_s)) * n
            peak[b] = max(peak[b], n)
            b += 1
    widths = [min(bin_s, end_s - b * bin_s) for b in range(bins)]
    return {"bin_s": bin_s, "mean": [round(a / w, 3) if w > 0 else 0.0 for a, w in zip(area, widths)], "peak": peak}
