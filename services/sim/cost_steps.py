"""How long one decode or prefill step of one model takes on one device: the fitted formulas.

    decode step  = a + b * batch + c * context_tokens + s * ((batch - 1) // 64)
    prefill step = max(floor, p0 + p1 * tokens + p2 * squared_tokens)

context_tokens: the cached tokens the batch attends to, summed over its sequences.
squared_tokens: the sum over the step's sequences of (cached + chunk)^2 - cached^2 (a prompt
prefilled whole: its length squared), DistServe's attention term; None stands for one
sequence of `tokens` with nothing cached.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StepFit:
    """Step-time coefficients of one architecture on one device, in seconds."""

    decode_fixed_s: float
    decode_per_seq_s: float
    decode_per_context_token_s: float
    prefill_fixed_s: float
    prefill_per_token_s: float
    decode_per_64_seqs_s: float = 0.0
    """Added once per whole 64 sequences beyond the first 64 (the batch steps of H20 and A100)."""
    prefill_floor_s: float = 0.0
    """No prefill step is faster: a few tokens cost one read of the weights."""
    prefill_per_squared_token_s: float = 0.0

    def decode_s(self, batch: int, context_tokens: int) -> float:
        return (
            self.decode_fixed_s
            + self.decode_per_seq_s * batch
            + self.decode_per_context_token_s * context_tokens
            + self.decode_per_64_seqs_s * ((batch - 1) // 64)
        )

    def prefill_s(self, tokens: int, squared_tokens: int | None = None) -> float:
        squared = tokens * tokens if squared_tokens is None else squared_tokens
        affine = self.prefill_fixed_s + self.prefill_per_token_s * tokens + self.prefill_per_squared_token_s * squared
        return max(self.prefill_floor_s, affine)
