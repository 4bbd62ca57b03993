"""Several choices of one request at once: an upstream request each, their updates interleaved as they come.

    async with fan_out(core, model, choices, started) as batches:
        async for batch in batches:   # [(choice index, Update), ...]: what was ready together
            ...

Each choice is read by a task of its own (one per choice, not per token). Leaving the block
before every choice has finished (an error, the client gone) cancels the others upstream.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from services.gateway.choice_feed import choice_updates
from services.gateway.choices import Choice
from services.gateway.core import GatewayCore
from services.gateway.models import ServedModel
from services.gateway.stream import Update
from services.gateway.upstream import TokenFeed
from shared.tracing import tracer

Batch = list[tuple[int, Update]]


class _Merge:
    def __init__(self, count: int):
        self.queue: asyncio.Queue[tuple[int, Update | Exception]] = asyncio.Queue()
        self.left = count
        """Choices that have not finished."""
        self.failed = False
        self.open_feeds: set[TokenFeed] = set()


@asynccontextmanager
async def fan_out(
    core: GatewayCore, model: ServedModel, choices: list[Choice], started: float
) -> AsyncIterator[AsyncIterator[Batch]]:
    merge = _Merge(len(choices))
    tasks = [asyncio.create_task(_read(core, model, c, started, merge)) for c in choices]
    batches = _batches(merge)
    try:
        yield batches
    finally:
        await batches.aclose()
        if merge.failed:
            for feed in merge.open_feeds:
                feed.cancel_reason = "another choice failed"
        for task in tasks:
            task.cancel()
        # Each task cancels its choice upstream as it ends; the response waits for that.
        await asyncio.gather(*tasks, return_exceptions=True)


async def _read(core: GatewayCore, model: ServedModel, choice: Choice, started: float, merge: _Merge) -> None:
    attributes = {"request.id": choice.request.id, "choice.index": choice.index}
    with tracer().start_as_current_span("gateway.choice", attributes=attributes) as span:
        try:
            async with core.upstream.generate(choice.request) as feed:
                merge.open_feeds.add(feed)
                try:
                    async for update in choice_updates(core, model, choice, feed, started, span):
                        merge.queue.put_nowait((choice.index, update))
                finally:
                    merge.open_feeds.discard(feed)
        except Exception as e:  # raised by the handler: the client gets it, the other choices are cancelled
            merge.queue.put_nowait((choice.index, e))


async def _batches(merge: _Merge) -> AsyncIterator[Batch]:
    queue = merge.queue
    while merge.left:
        batch = [await queue.get()]
        while not queue.empty():
            batch.append(queue.get_nowait())
        for i, (_, item) in enumerate(batch):
            if isinstance(item, Exception):
                merge.failed = True
                if i:
                    yield batch[:i]
                raise item
            if item.error is not None:
                merge.failed = True
            if item.finished:
                merge.left -= 1
        yield batch
