"""The open-loop workload of `tokenpool bench sched`: seeded Poisson arrivals over several models.

    weights = popularity(MODELS, "zipf")
    arrivals = poisson_arrivals(MODELS, weights, rate_per_s=1.0, duration_s=45, seed=0)

Pure: the same arguments give the same arrivals, so both scheduling policies of one run
(and runs on other machines) face exactly the same requests at the same offsets.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

POPULARITY = ("uniform", "zipf")


@dataclass(frozen=True)
class Arrival:
    index: int
    """Position in the workload, from 0."""
    at_s: float
    """Seconds after the load begins at which the request is sent."""
    model: str


def popularity(models: Sequence[str], kind: str, zipf_exponent: float = 1.0) -> tuple[float, ...]:
    """Each model's share of the requests, summing to 1. zipf: the i-th model (from 1) in
    proportion to 1 / i**zipf_exponent, so the first listed is the most popular."""
    if not models:
        raise ValueError("popularity needs at least one model")
    if kind == "uniform":
        raw = [1.0] * len(models)
    elif kind == "zipf":
        if not zipf_exponent > 0:
            raise ValueError(f"zipf exponent must be > 0, got {zipf_exponent}")
        raw = [1.0 / (i + 1) ** zipf_exponent for i in range(len(models))]
    else:
        raise ValueError(f"popularity {kind!r}: use one of {', '.join(POPULARITY)}")
    total = sum(raw)
    return tuple(w / total for w in raw)


def poisson_arrivals(
    models: Sequence[str], weights: Sequence[float], rate_per_s: float, duration_s: float, seed: int
) -> list[Arrival]:
    """Arrivals of a Poisson process of `rate_per_s` requests per second over [0, duration_s),
    each for a model drawn with `weights`."""
    if len(models) != len(weights) or not models:
        raise ValueError("give one weight per model, and at least one model")
    if not rate_per_s > 0 or not duration_s > 0:
        raise ValueError(f"rate ({rate_per_s}) and duration ({duration_s}) must be positive")
    rng = random.Random(seed)
    arrivals: list[Arrival] = []
    t = rng.expovariate(rate_per_s)
    while t < duration_s:
        model = rng.choices(models, weights)[0]
        arrivals.append(Arrival(len(arrivals), t, model))
        t += rng.expovariate(rate_per_s)
    return arrivals
