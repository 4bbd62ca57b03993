"""A task that runs an action every few seconds until it is cancelled, and does stop then.

A plain `while True: sleep; try: await action() except Exception: log` can outlive its cancel:
a client library may turn the CancelledError into another error (nats-py does inside JetStream
calls), which the `except` logs before looping on, and Python 3.11's `asyncio.wait_for` can
swallow a cancel that lands as its inner future completes. Either way the cancel is spent and
whoever awaits the task waits forever (a stopping autoscaler did, in a test). The task's own
cancel count (`Task.cancelling`) still records the request, so the loop checks it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable


def every(interval_s: float, action: Callable[[], Awaitable[object]], name: str, log: logging.Logger) -> asyncio.Task:
    """Runs `action` every `interval_s` (after each sleep); its failures are logged and the next
    round tries again."""

    async def loop() -> None:
        me = asyncio.current_task()
        while not me.cancelling():
            await asyncio.sleep(interval_s)
            try:
                await action()
            except Exception:  # noqa: BLE001 - logged; the next round tries again
                if me.cancelling():
                    return  # a cancel that the action's library turned into another error
                log.exception("%s failed", name)

    return asyncio.create_task(loop(), name=name)


async def stop_tasks(tasks, log: logging.Logger, timeout_s: float = 5.0) -> None:
    """Cancels `tasks` and waits for them, at most `timeout_s`: a task that spent its cancel
    (see above) somewhere this module does not reach is named and left behind, and the service
    goes on stopping."""
    tasks = [t for t in tasks if t is not None]
    for task in tasks:
        task.cancel()
    if not tasks:
        return
    _, pending = await asyncio.wait(tasks, timeout=timeout_s)
    for task in pending:
        log.warning("task %s did not stop within %.0f s of its cancel; going on without it", task.get_name(), timeout_s)
