"""Full KV pages of token prefixes, kept after their sequences end and shared with later ones.

A page holds the K/V of `block_tokens` consecutive tokens of one sequence. Once a page is full,
its content depends only on the model and on every token up to its end, so a later sequence
of the same model whose tokens start the same way can use that page instead of computing it
again (a chat's system prompt, the previous turns of a conversation, the n choices of one
prompt that arrive one after another).

Each full page is an entry keyed by (its parent entry, its own tokens), the parent of a first
page being the model's name: a chain of exact keys, so two prefixes never alias (no hash that
could collide). Entries get ids that are never reused, so when a page is reclaimed the entries
that named it as parent can no longer be reached and simply age out.

A page is shared by reference count. When the last sequence using a cached page lets go of
it, the page stays cached but idle: still free for the pool (`PagePool` reclaims idle pages,
least recently used first, when its free list runs out), reusable until then. Sequences never
write into a full page, so a shared page needs no copy on write.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Sequence

Key = tuple[object, tuple[int, ...]]


class PrefixCache:
    def __init__(self) -> None:
        self._entries: dict[Key, tuple[int, int]] = {}
        """(parent entry id or model name, block tokens) -> (entry id, page)."""
        self._key_of: dict[int, Key] = {}
        """Cached page -> its key."""
        self._refs: dict[int, int] = {}
        """Cached page -> sequences using it."""
        self._idle: OrderedDict[int, None] = OrderedDict()
        """Cached pages no sequence uses, least recently used first."""
        self._ids = itertools.count()
        self.hit_tokens = 0
        """Prompt tokens whose K/V came from the cache instead of being computed."""

    @property
    def num_idle(self) -> int:
        return len(self._idle)

    def holds(self, page: int) -> bool:
        return page in self._key_of

    def still_holds(self, entry: int, page: int) -> bool:
        """Whether `page` is still cached as `entry` (not reclaimed since)."""
        key = self._key_of.get(page)
        return key is not None and self._entries[key][0] == entry

    def refs(self, page: int) -> int:
        """Sequences using the cached page (0: idle)."""
        return self._refs[page]

    def match(self, model: str, token_ids: Sequence[int], block_tokens: int, max_tokens: int) -> list[tuple[int, int]]:
        """(entry id, page) of the cached full pages that begin `token_ids`, covering at most
        `max_tokens` tokens. The pages are not taken: `acquire` them."""
        found: list[tuple[int, int]] = []
        parent: object = model
        while (len(found) + 1) * block_tokens <= max_tokens:
            start = len(found) * block_tokens
            entry = self._entries.get((parent, tuple(token_ids[start : start + block_tokens])))
            if entry is None:
                break
            found.append(entry)
            parent = entry[0]
        return found

    def acquire(self, pages: Sequence[int]) -> None:
        for page in pages:
            self._refs[page] += 1
            self._idle.pop(page, None)

    def register(self, parent: object, tokens: tuple[int, ...], page: int) -> int:
        """Records a sequence's just-filled page under (parent, tokens); returns the entry id to
        chain the next page on. When the same prefix is already cached (another sequence
        computed it at the same time), that entry stands and `page` stays the sequence's own."""
        key = (parent, tokens)
        entry = self._entries.get(key)
        if entry is not None:
            return entry[0]
        entry_id = next(self._ids)
        self._entries[key] = (entry_id, page)
        self._key_of[page] = key
        self._refs[page] = 1
        return entry_id

    def release(self, page: int) -> None:
        """A sequence lets go of a cached page; unused, it becomes idle (most recently used)."""
        self._refs[page] -= 1
        if self._refs[page] == 0:
            self._idle[page] = None

    def reclaim(self) -> int | None:
        """Forgets the least recently used idle page and hands it back; None when none is idle."""
        if not self._idle:
            return None
        page, _ = self._idle.popitem(last=False)
        del self._entries[self._key_of.pop(page)]
        del self._refs[page]
        return page
