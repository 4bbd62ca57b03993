"""Continuous batching for the model that is computing: which sequences run this step.

A step is either a prefill (prompt chunks, possibly of several sequences) or a decode
(one token for each running sequence), as in nano-vllm. A sequence that starts prefilling
first takes the cached pages of its longest cached prefix (prefix_cache.py), and every page it
fills is offered to the cache. Sequences of other models wait
untouched; their KV pages stay on the device unless the engine swaps them to host memory.
`only` narrows a step to some request ids of the model (a turn's batch); the rest of the
model's sequences wait like another model's.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from .memory import PagePool
from .sequence import Sequence, SeqState


@dataclass
class ScheduledBatch:
    model: str
    seqs: list[Sequence]
    num_tokens: list[int]
    is_prefill: bool

    @property
    def sampling(self) -> list[bool]:
        """Whether each sequence reaches its last known token this step and so samples the next."""
        return [s.num_cached + n == len(s.token_ids) for s, n in zip(self.seqs, self.num_tokens)]


def pages_needed(num_tokens: int, block_tokens: int) -> int:
    return -(-num_tokens // block_tokens)


class Scheduler:
    def __init__(self, pages: PagePool, max_batch_tokens: int, max_batch_size: int):
        self.pages = pages
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_size = max_batch_size
        self.waiting: list[Sequence] = []
        self.running: list[Sequence] = []
        self.swapped: list[Sequence] = []

    def add(self, seq: Sequence) -> None:
        seq.state = SeqState.WAITING
        _insert_by_arrival(self.waiting, seq)

    def add_cached(self, seq: Sequence) -> None:
        """A sequence that arrives with its first tokens' KV already in its pages (a hand-off):
        it joins the running ones, or the swapped ones when those pages are in host memory."""
        if seq.host_pages:
            seq.state = SeqState.SWAPPED
            _insert_by_arrival(self.swapped, seq)
        else:
            seq.state = SeqState.RUNNING
            _insert_by_arrival(self.running, seq)

    def has_work(self, model: str | None = None) -> bool:
        return any(
            model is None or s.model == model for s in self.waiting + self.running + self.swapped
        )

    def schedule(
        self, model: str, block_tokens: int, only: Collection[str] | None = None
    ) -> ScheduledBatch | None:
        """The next batch of `model` (of its requests in `only`, when given): prefill first."""
        eligible = _eligible(model, only)
        return self._schedule_prefill(model, block_tokens, eligible) or self._schedule_decode(
            model, block_tokens, eligible
        )

    def _schedule_prefill(self, model: str, block_tokens: int, eligible) -> ScheduledBatch | None:
        partial = [s for s in self.running if eligible(s) and s.num_uncached > 1]
        candidates = partial + [s for s in self.waiting if eligible(s)]
        budget = self.max_batch_tokens
        seqs, counts = [], []
        computing = set()
        """Keys of the first page each chosen sequence computes (prefix cache)."""
        for seq in candidates:
            if budget == 0 or len(seqs) == self.max_batch_size:
                break
            starting = seq.state is SeqState.WAITING and not seq.pages
            if starting:
                self._reuse_prefix(seq, block_tokens)
            key = self._next_page_key(seq, block_tokens)
            if starting and key in computing:
                self._drop_pages(seq)  # another computes that page now: next step it is cached
                continue
            n = min(seq.num_uncached, budget)
            extra = pages_needed(seq.num_cached + n, block_tokens) - len(seq.pages)
            if not self.pages.can_allocate(extra):
                if seq.state is SeqState.WAITING:
                    self._drop_pages(seq)  # it waits holding nothing
                break
            seq.pages += self.pages.allocate(extra, clear=True)
            if seq.state is SeqState.WAITING:
                self.waiting.remove(seq)
                seq.state = SeqState.RUNNING
                _insert_by_arrival(self.running, seq)
                self._count_reuse(seq)
            seqs.append(seq)
            counts.append(n)
            budget -= n
            if key is not None:
                computing.add(key)
        return ScheduledBatch(model, seqs, counts, is_prefill=True) if seqs else None

    def _schedule_decode(self, model: str, block_tokens: int, eligible) -> ScheduledBatch | None:
        seqs = []
        for seq in [s for s in self.running if eligible(s) and s.num_uncached == 1]:
            if len(seqs) == self.max_batch_size:
                break
            if seq.state is not SeqState.RUNNING:
                continue  # preempted below while making room for an earlier sequence
            if not self._reserve_slot(seq, block_tokens, eligible):
                continue
            seqs.append(seq)
        return ScheduledBatch(model, seqs, [1] * len(seqs), is_prefill=False) if seqs else None

    def _reserve_slot(self, seq: Sequence, block_tokens: int, eligible) -> bool:
        """Makes room for seq's next token, preempting the latest eligible arrival if needed."""
        if pages_needed(seq.num_cached + 1, block_tokens) <= len(seq.pages):
            return True
        while not self.pages.can_allocate(1):
            victim = max((s for s in self.running if eligible(s) and s.pages), key=lambda s: s.arrival)
            self.preempt(victim)
            if victim is seq:
                return False
        seq.pages += self.pages.allocate(1, clear=True)
        return True

    def preempt(self, seq: Sequence) -> None:
        """Frees seq's pages; it re-computes its prompt and produced tokens when rescheduled
        (from its own pages, if the prefix cache still holds them)."""
        self.running.remove(seq)
        self._drop_pages(seq)
        self.add(seq)

    def commit(self, batch: ScheduledBatch, block_tokens: int) -> None:
        for seq, n in zip(batch.seqs, batch.num_tokens):
            seq.num_cached += n
            self._offer_full_pages(seq, block_tokens)

    def finish(self, seq: Sequence, reason: str) -> None:
        for queue in (self.waiting, self.running, self.swapped):
            if seq in queue:
                queue.remove(seq)
        self._drop_pages(seq)
        seq.state = SeqState.FINISHED
        seq.finish_reason = reason

    def release_pages(self, seq: Sequence) -> None:
        """Frees seq's device pages (its KV lives elsewhere now, or nowhere)."""
        self.pages.free(seq.pages)
        seq.pages = []
        seq.prefix_entries = []

    def _drop_pages(self, seq: Sequence) -> None:
        self.release_pages(seq)
        seq.num_cached = 0

    def _reuse_prefix(self, seq: Sequence, block_tokens: int) -> None:
        """Takes the cached pages of seq's longest cached prefix, leaving at least its last
        token to compute (the step needs that token's logits)."""
        cache = self.pages.cache
        if cache is None:
            return
        found = cache.match(seq.model, seq.token_ids, block_tokens, len(seq.token_ids) - 1)
        if not found:
            return
        seq.pages = [page for _, page in found]
        cache.acquire(seq.pages)
        seq.prefix_entries = [entry for entry, _ in found]
        seq.num_cached = len(found) * block_tokens

    def _count_reuse(self, seq: Sequence) -> None:
        """A sequence starts prefilling with the cached tokens it took (0 when none)."""
        if self.pages.cache is not None:
            self.pages.cache.hit_tokens += seq.num_cached
        if not seq.output_ids:  # (a recompute after a preemption is the engine's business)
            seq.cached_prompt_tokens = seq.num_cached

    def _next_page_key(self, seq: Sequence, block_tokens: int):
        """The prefix cache key of the first full prompt page seq has yet to compute; None
        without a cache or such a page. Sequences of one prompt (n choices) that arrive
        together would all compute it; the later ones wait a step and take it from the cache."""
        i = len(seq.prefix_entries)
        if self.pages.cache is None or (i + 1) * block_tokens > len(seq.token_ids) - 1:
            return None
        return _page_key(seq, i, block_tokens)

    def _offer_full_pages(self, seq: Sequence, block_tokens: int) -> None:
        cache = self.pages.cache
        if cache is None:
            return
        entries = seq.prefix_entries
        while (len(entries) + 1) * block_tokens <= seq.num_cached:
            entries.append(cache.register(*_page_key(seq, len(entries), block_tokens), seq.pages[len(entries)]))

    def mark_swapped(self, seq: Sequence) -> None:
        self.running.remove(seq)
        seq.state = SeqState.SWAPPED
        _insert_by_arrival(self.swapped, seq)

    def recompute_swapped(self, seq: Sequence) -> None:
        """A swapped-out sequence whose KV cannot come back whole computes it again."""
        self.swapped.remove(seq)
        seq.num_cached = 0
        self.add(seq)

    def mark_swapped_in(self, seq: Sequence) -> None:
        self.swapped.remove(seq)
        seq.state = SeqState.RUNNING
        _insert_by_arrival(self.running, seq)


def _page_key(seq: Sequence, i: int, block_tokens: int) -> tuple[object, tuple[int, ...]]:
    """The prefix cache key of seq's page i: its parent entry (the model's name for the first) and its tokens."""
    parent = seq.prefix_entries[i - 1] if i else seq.model
    return parent, tuple(seq.token_ids[i * block_tokens : (i + 1) * block_tokens])


def _eligible(model: str, only: Collection[str] | None):
    if only is None:
        return lambda s: s.model == model
    return lambda s: s.model == model and s.request_id in only


def _insert_by_arrival(queue: list[Sequence], seq: Sequence) -> None:
    i = len(queue)
    while i > 0 and queue[i - 1].arrival > seq.arrival:
        i -= 1
    queue.insert(i, seq)
