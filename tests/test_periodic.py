"""shared/periodic.every: the loop stops when cancelled, whatever its action does with the cancel."""

import asyncio
import logging

import pytest

from shared.periodic import every, stop_tasks

log = logging.getLogger("test")


async def _run_and_cancel(action) -> tuple[int, bool]:
    calls = 0
    started = asyncio.Event()

    async def counted():
        nonlocal calls
        calls += 1
        started.set()
        await action()

    task = every(0.01, counted, "test", log)
    await asyncio.wait_for(started.wait(), 5)
    task.cancel()
    done, _ = await asyncio.wait([task], timeout=5)
    return calls, bool(done)


async def _plain() -> None:
    await asyncio.sleep(0.5)


async def _turns_the_cancel_into_another_error() -> None:
    try:
        await asyncio.sleep(0.5)
    except asyncio.CancelledError:
        raise RuntimeError("connection closed") from None  # as nats-py does inside JetStream calls


async def _swallows_the_cancel() -> None:
    try:
        await asyncio.sleep(0.5)
    except asyncio.CancelledError:
        return  # as asyncio.wait_for can in Python 3.11 when its future completes at that moment


@pytest.mark.parametrize("action", [_plain, _turns_the_cancel_into_another_error, _swallows_the_cancel])
def test_a_cancelled_loop_ends_whatever_its_action_did_with_the_cancel(action):
    calls, ended = asyncio.run(_run_and_cancel(action))
    assert ended, "the task was still running 5 s after its cancel"
    assert calls == 1


def test_a_failing_action_is_logged_and_tried_again(caplog):
    async def main():
        calls = []

        async def fails():
            calls.append(1)
            raise ValueError("boom")

        task = every(0.01, fails, "flaky", log)
        while len(calls) < 3:
            await asyncio.sleep(0.01)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return len(calls)

    with caplog.at_level(logging.ERROR, logger="test"):
        assert asyncio.run(main()) >= 3
    assert "flaky failed" in caplog.text and "boom" in caplog.text


def test_stopping_tasks_goes_on_past_one_that_ignores_its_cancel(caplog):
    async def main():
        give_up = asyncio.Event()

        async def stubborn():
            while not give_up.is_set():
                try:
                    await asyncio.sleep(10)
                except asyncio.CancelledError:
                    continue

        async def polite():
            await asyncio.sleep(10)

        tasks = [asyncio.create_task(stubborn(), name="stubborn"), asyncio.create_task(polite(), name="polite")]
        await asyncio.sleep(0)
        loop = asyncio.get_running_loop()
        started = loop.time()
        await stop_tasks(tasks, log, timeout_s=0.2)
        took, states = loop.time() - started, (tasks[0].done(), tasks[1].cancelled())
        give_up.set()
        tasks[0].cancel()
        await asyncio.gather(tasks[0], return_exceptions=True)
        return took, states

    with caplog.at_level(logging.WARNING, logger="test"):
        took, (stubborn_done, polite_cancelled) = asyncio.run(main())
    assert took < 2 and not stubborn_done and polite_cancelled
    assert "task stubborn did not stop within 0 s" in caplog.text
