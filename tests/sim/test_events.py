import pytest

from services.sim.events import EventLoop


def test_events_run_in_time_order_and_same_time_events_in_scheduling_order():
    loop, seen = EventLoop(), []
    loop.at(2.0, seen.append, "c")
    loop.at(1.0, seen.append, "a")
    loop.at(2.0, seen.append, "d")
    loop.at(1.0, seen.append, "b")
    loop.run()
    assert seen == ["a", "b", "c", "d"]
    assert loop.now == 2.0


def test_a_callback_sees_its_own_time_and_can_schedule_later_events():
    loop, times = EventLoop(), []

    def tick():
        times.append(loop.now)
        if len(times) < 3:
            loop.after(0.5, tick)

    loop.at(1.0, tick)
    loop.run()
    assert times == [1.0, 1.5, 2.0]


def test_cancelled_events_do_not_run():
    loop, seen = EventLoop(), []
    loop.at(1.0, seen.append, "kept")
    loop.at(0.5, seen.append, "cancelled").cancel()
    loop.run()
    assert seen == ["kept"]


def test_run_until_stops_before_later_events_and_leaves_the_clock_there():
    loop, seen = EventLoop(), []
    loop.at(1.0, seen.append, 1)
    loop.at(5.0, seen.append, 5)
    loop.run(until=3.0)
    assert seen == [1] and loop.now == 3.0
    loop.run()
    assert seen == [1, 5]


def test_stop_ends_the_run_after_the_current_event():
    loop, seen = EventLoop(), []
    loop.at(1.0, lambda: (seen.append(1), loop.stop()))
    loop.at(2.0, seen.append, 2)
    loop.run()
    assert seen == [1] and loop.now == 1.0


def test_an_event_in_the_past_is_refused():
    loop = EventLoop()
    loop.at(2.0, lambda: None)
    loop.run()
    with pytest.raises(ValueError, match="already at 2.0"):
        loop.at(1.0, lambda: None)
    with pytest.raises(ValueError, match="delay"):
        loop.after(-1, lambda: None)
