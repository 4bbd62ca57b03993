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
    sampled_rows = [i for i, s in enumerate(seqs) if not s.params.greedy]
    if len(sampled_rows) == len(seqs):
        chosen = _sample_rows(adjusted.float(), seqs)
    else:
        chosen = adjusted.argmax(dim=-1)
        if sampled_rows:
            rows = torch.tensor(sampled_rows, device=logits.device)
            chosen[rows] = _sample_rows(adjusted[rows].float(), [seqs[i] for i in sampled_rows])
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
    counts, seen = seq.token_counts()
    if p.repetition_penalty != 1.0:
        ids = torch.tensor(list(seen), device=row.device)
        values = row[ids]
        row[ids] = torch.where(values > 0, values / p.repetition_penalty, values * p.repetition_penalty)
    if (p.presence_penalty or p.frequency_penalty) and counts:
        ids = torch.tensor(list(counts), device=row.device)
        times = torch.tensor(list(counts.values()), device=row.device, dtype=row.dtype)
        row[ids] -= p.frequency_penalty * times + p.presence_penalty
    if p.logit_bias:
        ids = torch.tensor([t for t, _ in p.logit_bias], device=row.device)
        row[ids] += torch.tensor([b for _, b in p.logit_bias], device=row.device, dtype=row.dtype)


FIRST_CANDIDATES = 64
"""Top-p looks for its nucleus among this many most likely tokens first, then 16 times more, and so on."""


def _sample_rows(logits: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
    """One token per row of float32 logits [rows, vocab], each row by its own generator.

    Each row draws one uniform number per step and picks the token where the cumulative
    probability passes it (inverse CDF), so a seed gives the same tokens whatever the batch
    around it. Top-k and top-p keep only the most likely tokens; those are found with topk, not
    a sort of the whole vocabulary (a sort of 32 rows of 49k logits takes ~100 ms on a CPU core).
    """
    device = logits.device
    temperature = torch.tensor([s.params.temperature for s in seqs], device=device, dtype=logits.dtype)
    scaled = logits / temperature[:, None]
    uniform = torch.tensor([torch.rand((), generator=s.generator).item() for s in seqs], device=device)
    truncated = [i for i, s in enumerate(seqs) if s.params.top_k > 0 or s.params.top_p < 1.0]
    if not truncated:  # the common case (OpenAI's defaults): no row indexing at all
        return _inverse_cdf(torch.softmax(scaled, dim=-1), uniform)
    chosen = torch.empty(len(seqs), dtype=torch.long, device=device)
    whole = [i for i in range(len(seqs)) if i not in set(truncated)]
    if whole:
        rows = torch.tensor(whole, device=device)
        chosen[rows] = _inverse_cdf(torch.softmax(scaled[rows], dim=-1), uniform[rows])
    rows = torch.tensor(truncated, device=device)
    chosen[rows] = _sample_truncated(scaled[rows], [seqs[i].params for i in truncated], uniform[rows])
    return chosen


def _sample_truncated(scaled: torch.Tensor, params: list[SamplingParams], uniform: torch.Tensor) -> torch.Tensor:
    vocab = scaled.shape[-1]
    device = scaled.device
    top_k = torch.tensor([p.top_k if 0 < p.top_k < vocab else vocab for p in params], device=device)
    top_p = torch.tensor([p.top_p for p in params], device=device, dtype=scaled.dtype)
    by_k = top_k < vocab
    log_norm = torch.logsumexp(scaled, dim=-1, keepdim=True)
    chosen = torch.empty(len(params), dtype=torch.long, device=device)
    pending = torch.arange(len(params), device=device)
    width = min(vocab, max(FIRST_CANDIDATES, int(top_k[by_k].max()) if by_k.any() else 0))
    while len(pending):
        rows = scaled[pending]
        values, ids = rows.sort(dim=-1, descending=True) if width == vocab else rows.topk(width, dim=-1)
        values = values.masked_fill(torch.arange(width, device=device) >= top_k[pending, None], float("-inf"))
        # top-k rows renormalise among their k tokens; top-p alone counts mass in the whole vocabulary
        norm = torch.where(by_k[pending, None], torch.logsumexp(values, dim=-1, keepdim=True), log_norm[pending])
        probs = torch.exp(values - norm)
        # (a top-k row's candidates are all of its k: found at once; its renormalised sum can
        # round to just under 1 and must not send it looking wider)
        found = by_k[pending] | (probs.sum(dim=-1) >= top_p[pending]) | (width == vocab)
        if found.any():
            done = pending[found]
            chosen[done] = _nucleus_pick(probs[found], ids[found], top_p[done], uniform[done])
        # the rest have a nucleus wider than their candidates (a flat distribution): look wider
        pending = pending[~found]
        width = width * 16 if width * 16 <= vocab // 8 else vocab
    return chosen


def _nucleus_pick(probs: torch.Tensor, ids: torch.Tensor, top_p: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """probs and ids: candidates most likely first. Keeps the smallest prefix whose mass reaches
    top_p (the first token always stays) and draws from it."""
    drop = probs.cumsum(dim=-1) - probs >= top_p[:, None]
    drop[:, 0] = False  # (a top_p that rounds to 0 in float32 would drop it too)
    probs = probs.masked_fill(drop, 0.0)
    return ids.gather(1, _inverse_cdf(probs, uniform)[:, None])[:, 0]


def _inverse_cdf(probs: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """Per row, the first index whose cumulative probability exceeds uniform * total (a zero
    probability is never chosen: its cumulative value equals the one before it)."""
    cdf = probs.cumsum(dim=-1)
    target = (uniform * cdf[:, -1])[:, None]
    return torch.searchsorted(cdf, target, right=True)[:, 0].clamp_(max=probs.shape[-1] - 1)
