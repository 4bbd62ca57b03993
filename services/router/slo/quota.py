"""Decode turn lengths derived from the TBT objective, after Aegaeon (Xiang et al., SOSP 2025, §4.3).

A round gives each model with running requests one turn. While other models take their
turns, a model's requests produce nothing, so each turn must bank enough tokens ahead of
their deadlines to cover the rest of the round. With t_i the step time of model i's batch,
n_i = TBT / t_i is how many tokens one TBT period buys; c is the round's total switch time.
The paper picks

    alpha   = max(c / (min_j n_j * Q_max) + sum_j 1/n_j, 0.5)
    quota_i = c / (n_i * (alpha - sum_j 1/n_j))

so the model with the fewest tokens per period gets at most Q_max, and the others
proportionally less.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class TurnInput:
    model: str
    step_s: float
    """Predicted time of one decode step of this model's batch."""
    switch_s: float
    """Predicted time to make this model the computing one (0 when it stays resident)."""
    tbt_s: float
    """The time-between-tokens objective of its requests (the tightest one in the batch)."""


def decode_quotas(turns: list[TurnInput], max_quota_s: float) -> dict[str, float]:
    """Seconds of decoding each model gets in its next turn; inf for a lone model (it never switches)."""
    if max_quota_s <= 0:
        raise ValueError(f"max_quota_s must be positive, got {max_quota_s}")
    for t in turns:
        if t.step_s <= 0 or t.tbt_s <= 0 or t.switch_s < 0:
            raise ValueError(f"{t.model}: step_s and tbt_s must be positive and switch_s not negative")
    if len(turns) <= 1:
        return {t.model: math.inf for t in turns}
    tokens_per_period = {t.model: t.tbt_s / t.step_s for t in turns}
    switch_total = sum(t.switch_s for t in turns)
    if switch_total == 0:
        return {t.model: t.step_s for t in turns}  # switching is free: rotate every step
    inverse_sum = sum(1 / n for n in tokens_per_period.values())
    alpha = max(round_load(turns, max_quota_s), 0.5)
    return {m: switch_total / (n * (alpha - inverse_sum)) for m, n in tokens_per_period.items()}


def round_load(turns: list[TurnInput], max_quota_s: float) -> float:
    """The formula's alpha before its floor: the share of the round each batch must decode to
    keep its TBT, plus the switches amortised over the longest quota. Above 1 the round cannot
    keep every TBT however the quotas are cut."""
    shares = [t.step_s / t.tbt_s for t in turns]
    load = sum(shares)
    if len(turns) > 1:
        load += sum(t.switch_s for t in turns) * max(shares) / max_quota_s
    return load


def overloaded(turns: list[TurnInput]) -> bool:
    """True when even without switch costs the models' batches cannot all keep their TBT."""
    return sum(t.step_s / t.tbt_s for t in turns) >= 1.0
