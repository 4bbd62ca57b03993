"""The router's guess of what one worker's prefix cache holds (gpu_worker/engine/prefix_cache.py).

    keys = page_keys("m", tokens, block_tokens=16)   # one key per full page, chained
    index.add(keys, capacity=worker.total_kv_pages)  # the router sent these tokens there
    index.match(keys)                                # -> pages a request would find cached

The engine keys a full KV page by (its parent page, its tokens), the first page's parent being
the model; the router keys the same pages by a hash of the same chain, with the worker's own
tokens per page for the model, so a page the router indexed is a page the engine registered
(unless a hash collides, which costs one routing choice, never a wrong token: the engine
checks exact keys). The worker's pool drops idle pages least recently used first once it is
full, so the index keeps at most the worker's KV page count, dropping its least recently used
keys first. It is a guess: pages that running requests hold make the real cache smaller, and
a worker that restarts loses its cache (the router then clears the index).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence


def page_keys(model: str, tokens: Sequence[int], block_tokens: int) -> list[int]:
    """Chained keys of the full pages the engine could reuse for `tokens`: those ending before
    the last token (a request always computes its last token itself, and a finished one never
    computed its last)."""
    if block_tokens <= 0:
        return []
    keys, key = [], hash(("tokenpool-prefix", model))
    for end in range(block_tokens, len(tokens), block_tokens):
        key = hash((key, tuple(tokens[end - block_tokens : end])))
        keys.append(key)
    return keys


class PrefixIndex:
    def __init__(self):
        self._keys: OrderedDict[int, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._keys)

    def match(self, keys: list[int]) -> int:
        """How many of the leading keys the index holds."""
        n = 0
        for key in keys:
            if key not in self._keys:
                break
            n += 1
        return n

    def add(self, keys: list[int], capacity: int) -> None:
        """Records (or refreshes) the keys as the most recently used, then drops the least
        recently used beyond `capacity` pages."""
        for key in keys:
            self._keys[key] = None
            self._keys.move_to_end(key)
        while len(self._keys) > max(capacity, 0):
            self._keys.popitem(last=False)

    def clear(self) -> None:
        self._keys.clear()
