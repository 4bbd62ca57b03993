"""Dedicated serving, the baseline every market starts from: each GPU serves one model only.

A model's GPUs never switch (a model with no request still holds one); they batch the model's requests as any single-model server does.
So each model is simulated on its own GPUs (the router's policy with one model: nothing to
multiplex) and the runs are put together. Requests of a model left without a GPU are rejected
and count with attainment 0, as every lost request does.

    result = simulate_dedicated(workload, SimConfig(gpus=12, scheduling="dedicated"))
    result = simulate_dedicated(workload, config, allocation={"m0": 2, "m1": 1})
"""

from __future__ import annotations

import dataclasses
from collections import Counter

from services.sim.cost import CostModel
from services.sim.errors import SimError
from services.sim.run import RequestRecord, SimConfig, SimResult, Simulation
from services.sim.workload import Workload


def allocate(workload: Workload, gpus: int) -> dict[str, int]:
    """One GPU per model, most-requested models first; GPUs beyond one per model go, one at a
    time, to the model with the most output tokens per GPU."""
    tokens = Counter()
    for a in workload.arrivals:
        tokens[a.model] += a.output_tokens
    order = sorted(workload.models, key=lambda m: (-tokens[m], workload.models.index(m)))
    allocation = {m: 1 for m in order[:gpus]}
    for _ in range(gpus - len(allocation)):
        hottest = max(allocation, key=lambda m: (tokens[m] / allocation[m], -order.index(m)))
        allocation[hottest] += 1
    return allocation


def model_workload(workload: Workload, model: str) -> Workload:
    arrivals = tuple(a for a in workload.arrivals if a.model == model)
    return Workload(f"{workload.name}[{model}]", arrivals, {model: workload.architectures[model]})


def simulate_model(workload: Workload, model: str, gpus: int, config: SimConfig, cost: CostModel) -> SimResult:
    """`model`'s requests alone on `gpus` GPUs of their own."""
    alone = dataclasses.replace(config, gpus=gpus, prefill_gpus=0, scheduling="request")
    return Simulation(model_workload(workload, model), alone, cost).run()


def simulate_dedicated(
    workload: Workload, config: SimConfig, cost: CostModel | None = None, allocation: dict[str, int] | None = None
) -> SimResult:
    if config.prefill_gpus:
        raise SimError("dedicated serving has no prefill-only GPUs: leave prefill_gpus at 0")
    cost = cost or CostModel.for_models(config.gpu_profile, workload.architectures)
    allocation = allocation if allocation is not None else allocate(workload, config.gpus)
    unknown = sorted(set(allocation) - set(workload.models))
    if unknown:
        raise SimError(f"allocation names models the workload does not have: {', '.join(unknown)}")
    if any(k < 1 for k in allocation.values()):
        raise SimError("every model in a dedicated allocation needs at least one GPU")
    # A model with no request in the workload still holds its GPUs: nothing to simulate there.
    requested = {a.model for a in workload.arrivals}
    runs = [simulate_model(workload, m, k, config, cost) for m, k in allocation.items() if m in requested]
    records = [r for run in runs for r in run.records]
    for i, a in enumerate(a for a in workload.arrivals if a.model not in allocation):
        record = RequestRecord(f"unserved{i}", a, ends=["rejected"])
        record.error = f"503 no_worker: no GPU serves model {a.model} under dedicated serving"
        records.append(record)
    total = sum(allocation.values())
    return SimResult(
        dataclasses.replace(config, gpus=total),
        workload,
        records,
        [w for run in runs for w in run.workers],
        max((run.simulated_s for run in runs), default=0.0),
        sum(run.wall_s for run in runs),
        sum(run.events for run in runs),
        policy="dedicated",
        gpu_seconds=sum(run.simulated_s * run.config.gpus for run in runs),
    )
