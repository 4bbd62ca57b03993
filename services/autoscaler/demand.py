"""How much of a GPU a model needs: the router's demand idea (services/router/policy.py `_demand`).

While a model has requests it needs one decode step per TBT objective, a share
decode_step_s / tbt_s of a GPU, plus token_s for each token it makes per second; it has
requests for about min(1, token rate * tbt_s) of the time (each token paced at the TBT).
"""

from __future__ import annotations

import math

from services.autoscaler.tick import ModelInput


def gpu_share(model: ModelInput, window_s: float) -> float:
    if model.share is not None:
        return model.share
    token_rate = model.tokens / window_s
    busy = min(1.0, token_rate * model.tbt_s)
    return busy * model.decode_step_s / model.tbt_s + token_rate * model.token_s


def copies_for(share: float, fill: float) -> int:
    return max(1, math.ceil(share / fill - 1e-9))


def workers_for(total_share: float, fill: float) -> int:
    return math.ceil(total_share / fill - 1e-9)
