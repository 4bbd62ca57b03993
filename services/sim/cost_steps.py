"""How long one decode or prefill step of one model takes on one device: the fitted formulas.

    decode step  = a + b * batch + c * context_tokens + s * ((batch - 1) // 64)
                   (with a batch table: table(batch) + c * context_tokens + s * ...)
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
    decode_batch_table: tuple[tuple[int, float], ...] = ()
    """Measured (batch, seconds of a step at no context), in batch order, for a device whose step
    time is not linear in the batch (a CPU: batches of 2 and 3 step slower than 4). When given it
    replaces a + b * batch: linear between its batches, slope b beyond the last, its first entry below."""

    def decode_s(self, batch: int, context_tokens: int) -> float:
        return (
            self._batch_s(batch)
            + self.decode_per_context_token_s * context_tokens
            + self.decode_per_64_seqs_s * ((batch - 1) // 64)
        )

    def _batch_s(self, batch: int) -> float:
        table = self.decode_batch_table
        if not table:
            return self.decode_fixed_s + self.decode_per_seq_s * batch
        if batch <= table[0][0]:
            return table[0][1]
        for (b0, s0), (b1, s1) in zip(table, table[1:]):
            if batch <= b1:
                return s0 + (s1 - s0) * (batch - b0) / (b1 - b0)
        last_batch, last_s = table[-1]
        return last_s + self.decode_per_seq_s * (batch - last_batch)

    def prefill_s(self, tokens: int, squared_tokens: int | None = None) -> float:
        squared = tokens * tokens if squared_tokens is None else squared_tokens
        affine = self.prefill_fixed_s + self.prefill_per_token_s * tokens + self.prefill_per_squared_token_s * squared
        return max(self.prefill_floor_s, affine)
