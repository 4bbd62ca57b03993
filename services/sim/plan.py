"""Capacity planning: the fewest GPUs with which each policy reaches a target attainment.

    plans = plan(workload, target=0.9, base=SimConfig(gpu_profile="H100"))
    plans["token"].gpus, plans["token"].models_per_gpu, plans["token"].attainment

token and request: the pool's size is searched by bisection on [1, models] (doubling past it
while the target is missed), each probe a full simulation. Attainment rises with the GPUs
but not strictly (a different pool size shuffles placements), so bisection finds a pool
that meets the target with one GPU fewer missing it, not a proof that no smaller pool would.
dedicated: each model gets the fewest GPUs of its own with which its requests alone reach the
target, so the pool meets it too (the mean of per-model attainments weighted by requests).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from services.sim.cost import CostModel
from services.sim.dedicated import simulate_model
from services.sim.errors import SimError
from services.sim.run import POLICIES, SimConfig, simulate
from services.sim.workload import Workload

MAX_GPUS_PER_MODEL = 64
"""Where the search gives up: a pool this many times the models' count still misses the target."""


@dataclass
class PolicyPlan:
    policy: str
    gpus: int | None
    """Fewest GPUs found to reach the target; None when even the search's largest pool missed it."""
    attainment: float | None
    """The run at `gpus`."""
    models: int
    probes: dict[int, float] = field(default_factory=dict)
    """GPUs -> attainment of every pool size simulated."""
    summary: dict | None = None
    """The run at `gpus` (SimResult.summary())."""

    @property
    def models_per_gpu(self) -> float | None:
        return round(self.models / self.gpus, 3) if self.gpus else None

    def as_dict(self) -> dict:
        return {
            "gpus": self.gpus,
            "models_per_gpu": self.models_per_gpu,
            "attainment": self.attainment,
            "probes": {str(g): a for g, a in sorted(self.probes.items())},
        }


def plan(
    workload: Workload,
    target: float = 0.9,
    base: SimConfig | None = None,
    policies: Iterable[str] = POLICIES,
    cost: CostModel | None = None,
    progress: Callable[[str, int, float], None] | None = None,
) -> dict[str, PolicyPlan]:
    if not 0 < target <= 1:
        raise SimError(f"target attainment must be in (0, 1], got {target}")
    base = base or SimConfig()
    cost = cost or CostModel.for_models(base.gpu_profile, workload.architectures)
    plans = {}
    for policy in policies:
        if policy not in POLICIES:
            raise SimError(f"policy {policy!r} is not one of {', '.join(POLICIES)}")
        search = _plan_dedicated if policy == "dedicated" else _plan_pooled
        plans[policy] = search(workload, target, dataclasses.replace(base, scheduling=policy), cost, progress)
    return plans


def _plan_pooled(workload, target, config, cost, progress) -> PolicyPlan:
    models = len(workload.models)
    found = PolicyPlan(config.scheduling, None, None, models)
    summaries: dict[int, dict] = {}  # summaries only: a probe's records are dropped once scored

    def probe(gpus: int) -> bool:
        if gpus not in summaries:
            summaries[gpus] = simulate(workload, dataclasses.replace(config, gpus=gpus), cost).summary()
            found.probes[gpus] = summaries[gpus]["attainment"] or 0.0
            if progress:
                progress(config.scheduling, gpus, found.probes[gpus])
        return found.probes[gpus] >= target

    low = config.prefill_gpus + 1
    high = max(models, low)
    while not probe(high):
        if high >= MAX_GPUS_PER_MODEL * models:
            return found
        low, high = high + 1, high * 2
    while low < high:
        mid = (low + high) // 2
        if probe(mid):
            high = mid
        else:
            low = mid + 1
    found.gpus, found.attainment, found.summary = high, found.probes[high], summaries[high]
    return found


def _plan_dedicated(workload, target, config, cost, progress) -> PolicyPlan:
    """Each model alone on growing GPUs until its requests meet the target. The pool is those
    last runs side by side, so its figures are theirs summed (attainment: their mean weighted
    by requests, each run's own rounded to 4 digits); nothing is simulated twice."""
    allocation = {}
    counts = {"requests": 0, "completed": 0, "rejected": 0, "failed": 0, "unfinished": 0}
    weighted = 0.0
    requested = {a.model for a in workload.arrivals}
    for model in workload.models:
        gpus = 1
        if model not in requested:
            allocation[model] = gpus  # deployed all the same, idle
            continue
        while ((s := simulate_model(workload, model, gpus, config, cost).summary())["attainment"] or 0.0) < target:
            gpus += 1
            if gpus > MAX_GPUS_PER_MODEL:
                return PolicyPlan("dedicated", None, None, len(workload.models))
        allocation[model] = gpus
        weighted += (s["attainment"] or 0.0) * s["requests"]
        counts = {k: v + s[k] for k, v in counts.items()}
    total = sum(allocation.values())
    attainment = round(weighted / counts["requests"], 4) if counts["requests"] else 0.0
    if progress:
        progress("dedicated", total, attainment)
    summary = {"policy": "dedicated", "gpus": total, "models": len(workload.models), **counts, "attainment": attainment}
    return PolicyPlan("dedicated", total, attainment, len(workload.models), {total: attainment}, summary)

GPUS_OVER_TIME_BIN_S = 600.0
"""Bins of the autoscaled plans' GPUs-over-time series."""


def plan_autoscaled(
    workload: Workload,
    target: float,
    base: SimConfig,
    policies: Iterable[str] = POLICIES,
    cost: CostModel | None = None,
    progress: Callable[[str, dict], None] | None = None,
) -> dict[str, dict]:
    """GPU-hours per policy over the workload's span (its first to its last arrival), each at
    `target` attainment: token and request run once each with base.autoscale's planner sizing the
    pool (from base.gpus workers); dedicated keeps the fewest GPUs per model that meet the target
    (as plan() finds them) for the whole span. A policy that misses the target says so
    (`target_met` false) with what it used."""
    if not 0 < target <= 1:
        raise SimError(f"target attainment must be in (0, 1], got {target}")
    if base.autoscale is None:
        raise SimError("plan_autoscaled needs a SimConfig with an autoscale config")
    policies = list(policies)
    if not set(policies) & {"token", "request"}:
        raise SimError("the autoscaler sizes the token and request pools: plan at least one of them")
    cost = cost or CostModel.for_models(base.gpu_profile, workload.architectures)
    span_s = workload.duration_s
    out = {}
    for policy in policies:
        if policy not in POLICIES:
            raise SimError(f"policy {policy!r} is not one of {', '.join(POLICIES)}")
        started = time.perf_counter()
        if policy == "dedicated":
            alone = dataclasses.replace(base, autoscale=None, scheduling=policy, skip_idle=True)  # a day's idle hours, skipped
            found = _plan_dedicated(workload, target, alone, cost, None)
            out[policy] = _dedicated_hours(found, span_s, target)
        else:
            run = simulate(workload, dataclasses.replace(base, scheduling=policy), cost)
            out[policy] = _autoscaled_hours(run, target)
        out[policy]["wall_s"] = round(time.perf_counter() - started, 1)
        if progress:
            progress(policy, out[policy])
    return out


def _autoscaled_hours(run, target: float) -> dict:
    from services.sim.autoscale import binned

    s = run.summary()
    attainment = s["attainment"] or 0.0
    return {
        "gpu_hours": s["gpu_hours"],
        "attainment": attainment,
        "target_met": attainment >= target,
        "peak_gpus": s["peak_gpus"],
        "mean_gpus": s["mean_gpus"],
        "requests": s["requests"],
        "completed": s["completed"],
        "actions": s["actions"],
        "moves": s["moves"],
        "gpu_busy_fraction": s["gpu_busy_fraction"],
        "simulated_s": s["simulated_s"],
        "gpus_over_time": binned(run.gpus_over_time, run.simulated_s, GPUS_OVER_TIME_BIN_S),
    }


def _dedicated_hours(found: PolicyPlan, span_s: float, target: float) -> dict:
    if found.gpus is None:
        return {"gpu_hours": None, "attainment": None, "target_met": False, "gpus": None,
                "note": f"some model misses the target even on {MAX_GPUS_PER_MODEL} GPUs of its own"}  # fmt: skip
    s = found.summary or {}
    return {
        "gpu_hours": round(found.gpus * span_s / 3600, 3),
        "attainment": found.attainment,
        "target_met": found.attainment >= target,
        "gpus": found.gpus,
        "peak_gpus": found.gpus,
        "mean_gpus": found.gpus,
        "requests": s.get("requests"),
        "completed": s.get("completed"),
    }
