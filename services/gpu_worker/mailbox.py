"""Hands items from the engine thread to an asyncio.Queue, waking the event loop once per batch.

    mailbox = Mailbox(loop, queue)
    mailbox.put(item)          # from any thread; items reach `queue` in the order put

The engine thread hands over an Outbox after every step. One `call_soon_threadsafe` per item
would wake the loop (a write to its wake-up pipe, a callback) thousands of times a second with a
fast model; here a put while a wake-up is already pending only appends.
"""

from __future__ import annotations

import asyncio
import collections
import threading


class Mailbox:
    def __init__(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue):
        self._loop = loop
        self._queue = queue
        self._items: collections.deque = collections.deque()
        self._lock = threading.Lock()
        self._wake_pending = False

    def put(self, item) -> None:
        self._items.append(item)
        with self._lock:
            if self._wake_pending:
                return  # the pending _move takes this item too: it clears the flag before it drains
            self._wake_pending = True
        self._loop.call_soon_threadsafe(self._move)

    def _move(self) -> None:
        with self._lock:
            self._wake_pending = False
        while self._items:
            self._queue.put_nowait(self._items.popleft())
