"""Outboxes handed over by the engine thread reach the publisher's queue, all and in order."""

import asyncio
import threading

from services.gpu_worker.mailbox import Mailbox


def test_items_from_threads_arrive_all_in_order_with_few_wake_ups():
    async def scenario():
        loop, queue = asyncio.get_running_loop(), asyncio.Queue()
        mailbox = Mailbox(loop, queue)
        wake_ups = 0
        original = loop.call_soon_threadsafe

        def counting(callback, *args):
            nonlocal wake_ups
            wake_ups += 1
            return original(callback, *args)

        loop.call_soon_threadsafe = counting
        n = 20_000
        writers = [threading.Thread(target=lambda k=k: [mailbox.put((k, i)) for i in range(n)]) for k in range(2)]
        for w in writers:
            w.start()
        got = [await asyncio.wait_for(queue.get(), 10) for _ in range(2 * n)]
        for w in writers:
            w.join()
        return got, wake_ups, queue.empty()

    got, wake_ups, empty = asyncio.run(scenario())
    assert empty
    for k in range(2):
        assert [i for kk, i in got if kk == k] == list(range(20_000))  # each thread's items in its order
    assert wake_ups < 2 * 20_000 // 10  # puts while a wake-up is pending do not schedule another
