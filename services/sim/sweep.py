"""Attainment against the size of the market: the same pool serving the workload's first k
models, for growing k. One workload gives the whole curve, as the paper's synth-N files do
across files.

    curve = attainment_by_models(workload, SimConfig(gpus=8), ("token", "request"), points=6)
    curve["token"]  # [(models, attainment), ...]
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from services.sim.cost import CostModel
from services.sim.run import SimConfig, simulate
from services.sim.workload import Workload, natural_key


def sub_market(workload: Workload, models: int) -> Workload:
    """The workload's requests for its first `models` models (in name order)."""
    keep = sorted(workload.models, key=natural_key)[:models]
    kept = set(keep)
    arrivals = tuple(a for a in workload.arrivals if a.model in kept)
    return Workload(f"{workload.name}[:{models}]", arrivals, {m: workload.architectures[m] for m in keep})


def market_sizes(total: int, points: int) -> list[int]:
    """Up to `points` sizes from about total / points to total, evenly spaced."""
    points = max(1, min(points, total))
    return sorted({max(1, round(total * (i + 1) / points)) for i in range(points)})


def attainment_by_models(
    workload: Workload, config: SimConfig, policies: Iterable[str], points: int = 6, cost: CostModel | None = None
) -> dict[str, list[tuple[int, float]]]:
    cost = cost or CostModel.for_models(config.gpu_profile, workload.architectures)
    curves: dict[str, list[tuple[int, float]]] = {p: [] for p in policies}
    for size in market_sizes(len(workload.models), points):
        market = sub_market(workload, size)
        if not market.arrivals:
            continue
        for policy in curves:
            result = simulate(market, dataclasses.replace(config, scheduling=policy), cost)
            curves[policy].append((size, result.summary()["attainment"] or 0.0))
    return curves
