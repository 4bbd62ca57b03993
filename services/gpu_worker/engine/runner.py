"""Turns a scheduled batch into tensors and runs the model once."""

from __future__ import annotations

import torch

from .attention import build_attention_batch
from .residency import ModelSlot
from .scheduler import ScheduledBatch


def run_batch(slot: ModelSlot, batch: ScheduledBatch, device: torch.device, pad_page: int) -> torch.Tensor:
    """Returns float32 logits [sampling sequences, vocab], in batch order. `pad_page`: the
    arena's zero page, padding the block tables of shorter sequences."""
    input_ids, positions, logits_rows = [], [], []
    for seq, n, samples in zip(batch.seqs, batch.num_tokens, batch.sampling):
        start = seq.num_cached
        input_ids += seq.token_ids[start : start + n]
        positions += range(start, start + n)
        if samples:
            logits_rows.append(len(input_ids) - 1)
    attn = build_attention_batch(
        query_lens=batch.num_tokens,
        cached_lens=[s.num_cached for s in batch.seqs],
        pages=[s.pages for s in batch.seqs],
        block_tokens=slot.block_tokens,
        sliding_window=slot.cfg.sliding_window,
        device=device,
        pad_page=pad_page,
    )
    as_tensor = lambda xs: torch.tensor(xs, dtype=torch.long, device=device)  # noqa: E731
    return slot.model.forward(
        as_tensor(input_ids), as_tensor(positions), slot.kv, attn, as_tensor(logits_rows)
    )
