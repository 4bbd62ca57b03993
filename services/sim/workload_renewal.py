"""Arrival times of a stationary renewal process: i.i.d. Gamma, Weibull or exponential gaps
with a given mean rate, in numpy batches.

    times = renewal_times(rng, "Gamma", shape=0.25, rate=2.0, length=600.0)   # sorted, in [0, 600)

The process is looked at from a random instant rather than from an arrival: the first wait is
uniform over a length-biased gap. That makes the expected count rate * length exactly, however
bursty the gaps, where starting from an arrival would add about (cv**2 - 1) / 2 arrivals per window.
"""

from __future__ import annotations

import math

import numpy as np

from services.sim.errors import SimError

DISTRIBUTIONS = ("Gamma", "Weibull", "Exponential")


def renewal_times(rng: np.random.Generator, distribution: str, shape: float, rate: float, length: float) -> np.ndarray:
    """Gamma: `shape` k (gap cv 1/sqrt(k)); Weibull: shape c; Exponential: shape ignored.
    The scale follows from the mean gap 1/rate."""
    if not rate > 0 or not length > 0:
        return np.empty(0)
    mean = 1.0 / rate
    if distribution == "Exponential":
        distribution, shape = "Gamma", 1.0
    if not (shape > 0 and math.isfinite(shape)):
        raise SimError(f"a {distribution} shape must be a positive number, got {shape!r}")
    if distribution == "Gamma":
        scale = mean / shape

        def gaps(n: int) -> np.ndarray:
            return rng.gamma(shape, scale, n)

        biased = rng.gamma(shape + 1, scale)  # x * gamma_pdf(x; k) is Gamma(k + 1)
    elif distribution == "Weibull":
        scale = mean / math.exp(math.lgamma(1 + 1 / shape))

        def gaps(n: int) -> np.ndarray:
            return scale * rng.weibull(shape, n)

        biased = scale * rng.gamma(1 + 1 / shape) ** (1 / shape)  # (X/scale)**c of a length-biased X is Gamma(1 + 1/c)
    else:
        raise SimError(f"unknown inter-arrival distribution {distribution!r}; known: {', '.join(DISTRIBUTIONS)}")
    first = rng.random() * biased
    if first >= length:
        return np.empty(0)
    pieces = [np.array([first])]
    last = first
    while last < length:
        batch = last + np.cumsum(gaps(int(rate * (length - last) * 1.25) + 16))
        pieces.append(batch)
        last = batch[-1]
    times = np.concatenate(pieces)
    return times[: np.searchsorted(times, length)]
