"""FairQueue: one model's waiting requests and which goes next (services/router/fair_queue.py)."""

import pytest

from services.router.fair_queue import FairQueue


def queue(*items) -> FairQueue:
    q = FairQueue()
    for rid, tenant, at in items:
        q.append(rid, tenant, at)
    return q


def test_one_tenant_is_fcfs():
    q = queue(("r1", "t", 1.0), ("r2", "t", 2.0))
    assert q.next({"t": 9}).request_id == "r1"


def test_the_oldest_request_of_the_least_served_tenant_goes_next():
    q = queue(("a1", "a", 1.0), ("a2", "a", 2.0), ("b1", "b", 3.0), ("b2", "b", 4.0), ("c1", "c", 5.0))
    assert q.next({"a": 3, "b": 1, "c": 1}).request_id == "b1", "b and c tie at 1: b's is older"
    assert q.next({"a": 0, "b": 1}).request_id == "a1"
    assert q.next({"a": 3, "b": 1}, fair=False).request_id == "a1", "fair=False: FCFS"


def test_remove_resort_and_length():
    q = queue(("r2", "a", 2.0), ("r1", "b", 1.0), ("r3", "a", 3.0))
    q.resort()
    assert list(q) == ["r1", "r2", "r3"] and len(q) == 3
    q.remove("r1")
    assert q.next({"a": 5, "b": 0}).request_id == "r2", "b has nothing waiting any more"
    with pytest.raises(ValueError, match="r1 is not queued"):
        q.remove("r1")
    q.remove("r2")
    q.remove("r3")
    assert not q and q.next({}) is None


def test_a_blocked_tenant_waits_fair_or_fcfs():
    q = queue(("a1", "a", 1.0), ("b1", "b", 2.0), ("a2", "a", 3.0))
    blocked = {"a"}.__contains__
    assert q.next({"a": 0, "b": 5}, blocked=blocked).request_id == "b1"
    assert q.next({}, fair=False, blocked=blocked).request_id == "b1"
    q.remove("b1")
    assert q.next({}, blocked=blocked) is None and q.next({}, fair=False, blocked=blocked) is None
    assert q.next({}, blocked=lambda t: False).request_id == "a1"
