"""Next-token choice: greedy rows in one argmax, sampled rows each with their own generator.

Logprobs (the chosen token's and the top alternatives') are those of the model's own
distribution: before penalties, logit bias, temperature, top-k and top-p, as vLLM reports
them by default.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .sequence import SamplingParams, Sequence

TopLogprobs = tuple[tuple[int, float], ...]


@dataclass(frozen=True)
class Sampled:
    token_ids: list[int]
    logprobs: list[float] | None
    """Per row, the chosen token's logprob; None when no row asked."""
    top_logprobs: list[TopLogprobs] | None
    """Per row, its top_logprobs most likely (token id, logprob), most likely first; None when no row asked."""


def sample(logits: torch.Tensor, seqs: list[Sequence]) -> Sampled:
    """logits: float32 [len(seqs), vocab]."""
    want_logprobs = any(s.params.logprobs for s in seqs)
    log_probs = torch.log_softmax(logits, dim=-1) if want_logprobs else None
    adjusted = _adjust(logits, seqs)
    chosen = adjusted.argmax(dim=-1)
    sampled_rows = [i for i, s in enumerate(seqs) if not s.params.greedy]
    if sampled_rows:
        chosen = chosen.cpu()
        for i in sampled_rows:
            chosen[i] = _sample_row(adjusted[i], seqs[i].params, seqs[i].generator)
    if log_probs is None:
        return Sampled(chosen.tolist(), None, None)
    logprobs = log_probs.gather(1, chosen.to(logits.device)[:, None])[:, 0].tolist()
    return Sampled(chosen.tolist(), logprobs, _top_logprobs(log_probs, seqs))


def _top_logprobs(log_probs: torch.Tensor, seqs: list[Sequence]) -> list[TopLogprobs] | None:
    ks = [s.params.top_logprobs if s.params.logprobs else 0 for s in seqs]
    if not any(ks):
        return None
    values, ids = log_probs.topk(max(ks), dim=-1)
    values, ids = values.tolist(), ids.tolist()
    return [tuple(zip(ids[i][:k], values[i][:k])) for i, k in enumerate(ks)]


def _adjust(logits: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
    """The logits after each row's penalties and logit bias (the same tensor when none has any)."""
    rows = [i for i, s in enumerate(seqs) if s.params.adjusts_logits]
    if not rows:
        return logits
    logits = logits.clone()
    for i in rows:
        _adjust_row(logits[i], seqs[i])
    return logits


def _adjust_row(row: torch.Tensor, seq: Sequence) -> None:
    p = seq.params
    if p.repetition_penalty != 1.0:
        seen = torch.tensor(seq.token_ids, device=row.device).unique()
        values = row[seen]
        row[seen] = torch.where(values > 0, values / p.repetition_penalty, values * p.repetition_penalty)
    if p.presence_penalty or p.frequency_penalty:
        completion = seq.completion_ids
        if completion:
            ids, counts = torch.tensor(completion, device=row.device).unique(return_counts=True)
            row[ids] -= p.frequency_penalty * counts.to(row.dtype) + p.presence_penalty
    if p.logit_bias:
        ids = torch.tensor([t for t, _ in p.logit_bias], device=row.device)
        row[ids] += torch.tensor([b for _, b in p.logit_bias], device=row.device, dtype=row.dtype)


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
