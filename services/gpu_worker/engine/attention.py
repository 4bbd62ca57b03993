"""Paged attention in plain PyTorch: write new K/V into pages, gather each sequence's pages, SDPA.

A model's KV pages are a view of the shared page pool shaped
[pages, layers, 2 (k/v), block_tokens, kv_heads, head_dim]; the same code runs on CPU and CUDA.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class AttentionBatch:
    """Per-step metadata, built once and shared by every layer."""

    slot_pages: torch.Tensor  # [tokens] page of each new token
    slot_offsets: torch.Tensor  # [tokens] offset inside that page
    block_tables: torch.Tensor  # [seqs, max_pages]
    context_len: int  # keys to attend over after gathering (max over sequences)
    mask: torch.Tensor | None  # [seqs, 1, max_query, context_len] bool, None when all keys valid
    query_index: torch.Tensor | None  # [tokens] flat position inside [seqs * max_query]; None for decode
    num_seqs: int
    max_query: int
    causal_self_only: bool  # one sequence, no cached prefix: plain causal attention on new K/V


def build_attention_batch(
    query_lens: list[int],
    cached_lens: list[int],
    pages: list[list[int]],
    block_tokens: int,
    sliding_window: int | None,
    device: torch.device,
    pad_page: int,
) -> AttentionBatch:
    """`pad_page` fills the block tables of shorter sequences: a page of zeros (memory.DeviceArena)."""
    slot_pages, slot_offsets, query_index = [], [], []
    max_query = max(query_lens)
    for i, (n, start, seq_pages) in enumerate(zip(query_lens, cached_lens, pages)):
        for pos in range(start, start + n):
            slot_pages.append(seq_pages[pos // block_tokens])
            slot_offsets.append(pos % block_tokens)
        query_index.extend(range(i * max_query, i * max_query + n))
    context_lens = [s + n for s, n in zip(cached_lens, query_lens)]
    max_pages = max(len(p) for p in pages)
    tables = [p + [pad_page] * (max_pages - len(p)) for p in pages]
    context_len = max(context_lens)
    causal_self_only = len(query_lens) == 1 and cached_lens[0] == 0
    window_applies = sliding_window is not None and context_len > sliding_window

    mask = None
    uniform = all(c == context_len for c in context_lens) and max_query == 1
    if not (uniform or causal_self_only) or window_applies:
        causal_self_only = causal_self_only and not window_applies
        key_pos = torch.arange(context_len, device=device)
        starts = torch.tensor(cached_lens, device=device)
        q_pos = starts[:, None] + torch.arange(max_query, device=device)[None, :]
        lens = torch.tensor(context_lens, device=device)
        mask = (key_pos[None, None, :] <= q_pos[:, :, None]) & (key_pos[None, None, :] < lens[:, None, None])
        if sliding_window is not None:
            mask &= key_pos[None, None, :] > q_pos[:, :, None] - sliding_window
        mask[:, :, 0] |= ~mask.any(dim=-1)  # padded query rows attend somewhere, avoiding NaN
        mask = mask.unsqueeze(1)

    as_tensor = lambda xs: torch.tensor(xs, dtype=torch.long, device=device)  # noqa: E731
    return AttentionBatch(
        slot_pages=as_tensor(slot_pages),
        slot_offsets=as_tensor(slot_offsets),
        block_tables=as_tensor(tables),
        context_len=context_len,
        mask=mask,
        query_index=None if max_query == 1 else as_tensor(query_index),
        num_seqs=len(query_lens),
        max_query=max_query,
        causal_self_only=causal_self_only,
    )


def paged_attention(
    q: torch.Tensor,  # [tokens, heads, head_dim]
    k: torch.Tensor,  # [tokens, kv_heads, head_dim]
    v: torch.Tensor,
    layer_kv: torch.Tensor,  # [pages, 2, block_tokens, kv_heads, head_dim]
    batch: AttentionBatch,
) -> torch.Tensor:
    k_cache, v_cache = layer_kv[:, 0], layer_kv[:, 1]
    k_cache[batch.slot_pages, batch.slot_offsets] = k
    v_cache[batch.slot_pages, batch.slot_offsets] = v
    heads, head_dim = q.shape[1], q.shape[2]

    if batch.causal_self_only:
        out = F.scaled_dot_product_attention(
            q.transpose(0, 1).unsqueeze(0),
            k.transpose(0, 1).unsqueeze(0),
            v.transpose(0, 1).unsqueeze(0),
            is_causal=True,
            enable_gqa=True,
        )
        return out[0].transpose(0, 1).reshape(q.shape[0], heads * head_dim)

    b, s = batch.num_seqs, batch.context_len
    keys = _gather(k_cache, batch.block_tables, s)
    values = _gather(v_cache, batch.block_tables, s)
    if batch.query_index is None:
        queries = q.unsqueeze(2)  # [seqs, heads, 1, head_dim]
    else:
        padded = q.new_zeros(b * batch.max_query, heads, head_dim)
        padded[batch.query_index] = q
        queries = padded.view(b, batch.max_query, heads, head_dim).transpose(1, 2)
    out = F.scaled_dot_product_attention(queries, keys, values, attn_mask=batch.mask, enable_gqa=True)
    out = out.transpose(1, 2).reshape(b * batch.max_query, heads * head_dim)
    return out if batch.query_index is None else out[batch.query_index]


def _gather(cache: torch.Tensor, block_tables: torch.Tensor, context_len: int) -> torch.Tensor:
    b, max_pages = block_tables.shape
    pages = cache.index_select(0, block_tables.view(-1))  # [seqs * max_pages, block_tokens, ...]
    flat = pages.view(b, max_pages * cache.shape[1], cache.shape[2], cache.shape[3])
    return flat[:, :context_len].transpose(1, 2)
