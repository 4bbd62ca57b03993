"""Step-time and switch-time estimates that start from a prior and learn from what workers report."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class StepTimeModel:
    """Decode step time of one model as a + b * batch_tokens, refined online.

    The prior comes from a roofline (a = weight bytes / memory bandwidth) or a profile fit;
    each observation moves the estimate by `rate` towards what was measured, keeping the
    prior's slope ratio, so a few reports correct a wrong prior without forgetting its shape.
    """

    fixed_s: float
    per_token_s: float
    rate: float = 0.2
    observations: int = field(default=0, init=False)

    def __post_init__(self):
        if self.fixed_s < 0 or self.per_token_s < 0 or not 0 < self.rate <= 1:
            raise ValueError("fixed_s and per_token_s must be >= 0 and rate in (0, 1]")

    def predict(self, batch_tokens: int) -> float:
        return self.fixed_s + self.per_token_s * batch_tokens

    def observe(self, batch_tokens: int, seconds: float) -> None:
        if seconds <= 0 or batch_tokens <= 0:
            return
        predicted = self.predict(batch_tokens)
        scale = (1 - self.rate) + self.rate * seconds / predicted if predicted > 0 else 1.0
        self.fixed_s *= scale
        self.per_token_s *= scale
        self.observations += 1


@dataclass
class SwitchTimeModel:
    """Switch time = fixed cost + bytes / (bandwidth * efficiency), the efficiency learned online."""

    bandwidth_bytes_s: float
    fixed_s: float = 0.0
    efficiency: float = 1.0
    rate: float = 0.2
    observations: int = field(default=0, init=False)

    def __post_init__(self):
        if self.bandwidth_bytes_s <= 0 or self.fixed_s < 0 or not 0 < self.efficiency <= 1.5:
            raise ValueError("bandwidth_bytes_s must be positive, fixed_s >= 0, efficiency in (0, 1.5]")

    def predict(self, nbytes: int) -> float:
        return self.fixed_s + nbytes / (self.bandwidth_bytes_s * self.efficiency)

    def observe(self, nbytes: int, seconds: float) -> None:
        copy_s = seconds - self.fixed_s
        if nbytes <= 0 or copy_s <= 0:
            return
        measured = nbytes / (self.bandwidth_bytes_s * copy_s)
        self.efficiency = min((1 - self.rate) * self.efficiency + self.rate * measured, 1.5)
        self.observations += 1


def roofline_step_model(weight_bytes: int, kv_bytes_per_token: int, memory_bandwidth_bytes_s: float) -> StepTimeModel:
    """A decode step reads every weight once and every cached token's K/V once."""
    return StepTimeModel(
        fixed_s=weight_bytes / memory_bandwidth_bytes_s,
        per_token_s=kv_bytes_per_token / memory_bandwidth_bytes_s,
    )
