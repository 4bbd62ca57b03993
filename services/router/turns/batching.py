"""Grouping a worker's requests into prefill groups and decode batches (pure)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from services.router.turns.held import Held, pages_for


def prefill_groups(waiting: Iterable[Held], max_group: int) -> list[list[Held]]:
    """Grouped FCFS (Aegaeon §4.2): in arrival order, a request joins the first non-full group
    of its model, else opens a new group at the tail. Groups run head first."""
    groups: list[list[Held]] = []
    for held in sorted(waiting, key=lambda h: h.arrival):
        group = next((g for g in groups if g[0].model == held.model and len(g) < max_group), None)
        if group is None:
            groups.append([held])
        else:
            group.append(held)
    return groups


def decode_batches(
    decoding: Iterable[Held],
    capacity_pages: int,
    block_tokens: Callable[[str], int],
    growth: Callable[[Held], int],
    max_batch: int,
) -> list[list[Held]]:
    """One batch per model in order of its oldest request, FCFS inside; a model whose requests
    (with the tokens they will add during their turn) do not fit in the KV capacity, or exceed
    `max_batch`, is split into several batches. capacity_pages <= 0 means unknown: no split."""
    by_model: dict[str, list[Held]] = {}
    for held in sorted(decoding, key=lambda h: h.arrival):
        by_model.setdefault(held.model, []).append(held)
    batches: list[list[Held]] = []
    for model, members in by_model.items():
        block = block_tokens(model)
        batch: list[Held] = []
        pages = 0
        for held in members:
            need = pages_for(held.context + growth(held), block)
            full = len(batch) >= max_batch or (capacity_pages > 0 and batch and pages + need > capacity_pages)
            if full:
                batches.append(batch)
                batch, pages = [], 0
            batch.append(held)
            pages += need
        if batch:
            batches.append(batch)
    return batches
