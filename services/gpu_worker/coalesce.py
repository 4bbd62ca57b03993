"""Joins TokenChunks of one request that are waiting to be published into one chunk, and the
chunks bound for one token subject into one TokenBatch.

    coalesce([(s, chunk(r1, index 4, (7,))), (s, chunk(r1, index 5, (8,), "length"))])
    -> [(s, chunk(r1, index 4, (7, 8), "length"))]
    token_batches([(s, chunk(r1, ...)), (s, chunk(r2, ...)), (t, chunk(r3, ...))])
    -> [(s, TokenBatch((chunk(r1, ...), chunk(r2, ...)))), (t, TokenBatch((chunk(r3, ...),)))]

When the engine steps faster than the bus takes the tokens (many requests, a fast model),
outboxes queue up; publishing what queued as one message per request instead of one per
token saves every hop (worker, NATS, router, gateway) a message per token. Tokens that are
not waiting are never held back for this. A chunk with an error is never joined (it ends
the request on its own), nor is anything after a request's last chunk. A gateway reads all its
requests' tokens on one subject, so one message per subject carries a whole flush to it.
"""

from __future__ import annotations

from dataclasses import replace

from shared.protocol import TokenBatch, TokenChunk

BATCH_CHUNKS = 256
"""Most chunks in one TokenBatch, which keeps a message well under NATS's 1 MiB payload limit."""


def coalesce(chunks: list[tuple[str, TokenChunk]]) -> list[tuple[str, TokenChunk]]:
    """The same tokens in the same order per request, in as few chunks as can carry them."""
    groups: list[tuple[str, list[TokenChunk]]] = []
    open_at: dict[str, int] = {}  # request id -> position in `groups` of a group that can still grow
    for subject, chunk in chunks:
        at = open_at.get(chunk.request_id)
        if at is not None and _joinable(groups[at], subject, chunk):
            groups[at][1].append(chunk)
        else:
            at = len(groups)
            groups.append((subject, [chunk]))
        if chunk.error is None and chunk.finish_reason is None:
            open_at[chunk.request_id] = at
        else:
            open_at.pop(chunk.request_id, None)
    return [(subject, parts[0] if len(parts) == 1 else _join(parts)) for subject, parts in groups]


def _joinable(group: tuple[str, list[TokenChunk]], subject: str, chunk: TokenChunk) -> bool:
    group_subject, parts = group
    last = parts[-1]
    return (
        group_subject == subject
        and chunk.error is None
        and chunk.index == last.index + len(last.token_ids)
        and (chunk.logprobs is None) == (last.logprobs is None)
        and (chunk.top_logprobs is None) == (last.top_logprobs is None)
        and chunk.worker_id == last.worker_id
    )


def _join(parts: list[TokenChunk]) -> TokenChunk:
    first, last = parts[0], parts[-1]
    logprobs = None if first.logprobs is None else tuple(x for p in parts for x in p.logprobs)
    top = None if first.top_logprobs is None else tuple(x for p in parts for x in p.top_logprobs)
    return replace(
        first,
        token_ids=tuple(t for p in parts for t in p.token_ids),
        logprobs=logprobs,
        top_logprobs=top,
        finish_reason=last.finish_reason,
        usage=next((p.usage for p in reversed(parts) if p.usage is not None), None),
    )


def token_batches(chunks: list[tuple[str, TokenChunk]]) -> list[tuple[str, TokenBatch]]:
    """The chunks grouped by subject, in their order within each subject."""
    by_subject: dict[str, list[TokenChunk]] = {}
    for subject, chunk in chunks:
        by_subject.setdefault(subject, []).append(chunk)
    return [
        (subject, TokenBatch(tuple(group[i : i + BATCH_CHUNKS])))
        for subject, group in by_subject.items()
        for i in range(0, len(group), BATCH_CHUNKS)
    ]
