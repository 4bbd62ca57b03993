"""Next-token choice: greedy rows in one argmax, sampled rows each with their own generator.

Logprobs are those of the model's own distribution (before temperature, top-k, top-p).
"""

from __future__ import annotations

import torch

from .sequence import SamplingParams, Sequence


def sample(logits: torch.Tensor, seqs: list[Sequence]) -> tuple[list[int], list[float] | None]:
    """logits: float32 [len(seqs), vocab]. Returns the chosen ids and, if any asked, their logprobs."""
    chosen = logits.argmax(dim=-1)
    sampled_rows = [i for i, s in enumerate(seqs) if not s.params.greedy]
    if sampled_rows:
        chosen = chosen.cpu()
        for i in sampled_rows:
            chosen[i] = _sample_row(logits[i], seqs[i].params, seqs[i].generator)
    logprobs = None
    if any(s.params.logprobs for s in seqs):
        log_probs = torch.log_softmax(logits, dim=-1)
        logprobs = log_probs.gather(1, chosen.to(logits.device)[:, None])[:, 0].tolist()
    return chosen.tolist(), logprobs


def _sample_row(row: torch.Tensor, params: SamplingParams, generator: torch.Generator) -> int:
    row = row.float().cpu() / params.temperature
    if 0 < params.top_k < row.shape[0]:
        kth = torch.topk(row, params.top_k).values[-1]
        row = row.masked_fill(row < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, order = torch.sort(row, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # keep the smallest prefix whose mass reaches top_p (the first token always stays)
        drop = probs.cumsum(dim=-1) - probs >= params.top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        row = torch.full_like(row, float("-inf")).scatter(0, order, sorted_logits)
    probs = torch.softmax(row, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator).item())
