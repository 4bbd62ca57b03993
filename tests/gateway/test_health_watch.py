"""RouterWatch: when the gateway calls the pool healthy, as a table of report histories."""

import pytest

from services.gateway.health import RouterWatch
from shared.protocol import ModelLoad, RouterState


def state(router="r1", ready=True, workers=("w1",)):
    return RouterState(router, ready, workers, (ModelLoad("m", 2, 1, 10),), 3, 0.0)


CASES = [
    # reports as (arrival time, state), question time, ok, code
    ([], 0.0, False, "no_router"),
    ([(0.0, state())], 2.9, True, None),
    ([(0.0, state())], 3.5, False, "no_router"),
    ([(0.0, state(ready=False))], 1.0, False, "router_not_ready"),
    ([(0.0, state(workers=()))], 1.0, False, "no_worker"),
    ([(0.0, state()), (1.0, state(workers=()))], 1.5, False, "no_worker"),
    ([(0.0, state("r1")), (2.0, state("r2", workers=()))], 4.0, False, "no_worker"),
    ([(0.0, state("r1", workers=())), (0.5, state("r2"))], 1.0, True, None),
]


@pytest.mark.parametrize("reports, now, ok, code", CASES)
def test_health_from_router_reports(reports, now, ok, code):
    watch = RouterWatch(stale_s=3.0)
    for seen, s in reports:
        watch.observe(s, seen)
    health = watch.check(now)
    assert health.ok == ok
    if ok:
        assert health.body["status"] == "ok" and health.body["workers"] == ["w1"]
        assert health.body["models"] == {"m": {"queued": 2, "running": 1}}
    else:
        assert health.body["code"] == code and health.problem.status == 503
        assert health.problem.headers() == {"Retry-After": "1"}


def test_the_reason_says_what_is_missing():
    watch = RouterWatch(stale_s=3.0)
    assert "no RouterState in the last 3 s (last one: never)" in watch.check(10.0).body["reason"]
    watch.observe(state(), 0.0)
    assert "last one: 10.0 s ago" in watch.check(10.0).body["reason"]
