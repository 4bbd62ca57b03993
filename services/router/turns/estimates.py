"""What one worker's steps and switches cost, per model: priors, then what its TurnReports say."""

from __future__ import annotations

from dataclasses import dataclass

from services.router.slo.estimators import StepTimeModel, SwitchTimeModel
from shared.protocol import TurnReport


@dataclass(frozen=True)
class Priors:
    memory_bandwidth_bytes_s: float
    """Device memory bandwidth: a decode step reads every weight once (the roofline)."""
    host_to_device_bytes_s: float
    """Weight copy bandwidth of a model switch."""
    switch_fixed_s: float
    """Fixed cost of a switch beyond the copy."""
    decode_s_per_context_token: float
    """Extra decode step time per cached token attended to."""
    prefill_s_per_token: float
    """Prefill time per prompt token."""


class WorkerEstimates:
    def __init__(self, priors: Priors):
        self.priors = priors
        self._decode: dict[str, StepTimeModel] = {}
        self._prefill: dict[str, StepTimeModel] = {}
        self.switch = SwitchTimeModel(priors.host_to_device_bytes_s, priors.switch_fixed_s)

    def decode_step_s(self, model: str, weight_bytes: int, context_tokens: int) -> float:
        return self._decode_model(model, weight_bytes).predict(context_tokens)

    def prefill_s(self, model: str, weight_bytes: int, tokens: int) -> float:
        return self._prefill_model(model, weight_bytes).predict(tokens)

    def switch_s(self, weight_bytes: int) -> float:
        return self.switch.predict(weight_bytes)

    def observe(self, report: TurnReport, weight_bytes: int, switched: bool) -> None:
        if report.decode_steps > 0:
            per_step = report.decode_s / report.decode_steps
            context = max(report.decode_context_tokens // report.decode_steps, 1)
            self._decode_model(report.model, weight_bytes).observe(context, per_step)
        if report.prefill_tokens > 0:
            self._prefill_model(report.model, weight_bytes).observe(report.prefill_tokens, report.prefill_s)
        if switched and weight_bytes > 0:
            self.switch.observe(weight_bytes, report.switch_s)

    def _decode_model(self, model: str, weight_bytes: int) -> StepTimeModel:
        if model not in self._decode:
            p = self.priors
            self._decode[model] = StepTimeModel(
                weight_bytes / p.memory_bandwidth_bytes_s, p.decode_s_per_context_token, rate=0.3
            )
        return self._decode[model]

    def _prefill_model(self, model: str, weight_bytes: int) -> StepTimeModel:
        if model not in self._prefill:
            p = self.priors
            self._prefill[model] = StepTimeModel(weight_bytes / p.memory_bandwidth_bytes_s, p.prefill_s_per_token, rate=0.3)
        return self._prefill[model]
