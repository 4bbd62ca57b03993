"""Synthetic markets: Poisson or Gamma arrivals over models with Zipf popularity.

    synthetic(models=8, rate_rps=0.8, duration_s=120, zipf=1.0, cv=1.0, seed=1)

Gaps between arrivals (all models together) are Gamma with the given coefficient of variation
(cv 1 is Poisson; above 1 bursty, as AlpaServe's and ServeGen's workloads); each arrival picks
model k (k = 1..models) with probability proportional to 1 / k**zipf; prompt and output lengths
are log-normal (sigma 1) with the given means (ShareGPT's, per DESIGN.md), capped at 8192 and
2048 tokens.
"""

from __future__ import annotations

import math
import random

from services.sim.errors import SimError
from services.sim.workload import Arrival, Workload, make_workload, size_mix, zipf_weights


def synthetic(
    models: int = 8,
    rate_rps: float | None = None,
    duration_s: float = 120.0,
    zipf: float = 1.0,
    mean_input: int = 680,
    mean_output: int = 300,
    seed: int = 0,
    cv: float = 1.0,
) -> Workload:
    """`rate_rps` in all (default 0.1 per model, as in the paper's CSVs)."""
    if models < 1:
        raise SimError(f"a synthetic workload needs at least 1 model, got {models}")
    rate = 0.1 * models if rate_rps is None else rate_rps
    if not (rate > 0 and duration_s > 0):
        raise SimError(f"rate_rps ({rate:g}) and duration_s ({duration_s:g}) must be positive")
    if not (cv > 0 and math.isfinite(cv)):
        raise SimError(f"the coefficient of variation of the gaps must be positive (1 is Poisson), got {cv:g}")
    if mean_input < 1 or mean_output < 1:
        raise SimError(f"mean lengths must be at least 1 token, got {mean_input} and {mean_output}")
    rng = random.Random(seed)
    names = [f"model_{k:02d}" for k in range(models)]
    weights = zipf_weights(models, zipf)
    gap = _gaps(rng, rate, cv)
    arrivals = []
    t = next(gap)
    while t < duration_s:
        model = rng.choices(names, weights)[0]
        arrivals.append(Arrival(t, model, _lognormal(rng, mean_input, 8192), _lognormal(rng, mean_output, 2048)))
        t += next(gap)
    if not arrivals:
        raise SimError(f"no request arrived in {duration_s:g} s at {rate:g} requests/s; raise the rate or the duration")
    bursty = "" if cv == 1 else f"-cv{cv:g}"
    name = f"synthetic-{models}-{rate:g}rps-{duration_s:g}s-zipf{zipf:g}{bursty}-seed{seed}"
    return make_workload(name, arrivals, size_mix(names))


def _gaps(rng: random.Random, rate: float, cv: float):
    """Gaps of a stationary renewal process: the first one is the wait from a random instant."""
    if cv == 1:
        while True:
            yield rng.expovariate(rate)
    shape = 1 / cv**2
    scale = 1 / (rate * shape)
    # From a random instant the wait is uniform over a length-biased gap, Gamma(shape + 1).
    yield rng.random() * rng.gammavariate(shape + 1, scale)
    while True:
        yield rng.gammavariate(shape, scale)


def _lognormal(rng: random.Random, mean: float, cap: int) -> int:
    sigma = 1.0
    mu = math.log(mean) - sigma**2 / 2
    return max(1, min(cap, round(rng.lognormvariate(mu, sigma))))
