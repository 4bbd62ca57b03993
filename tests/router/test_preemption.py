"""Tenant preemption: a waiting tenant takes a slot from the tenant with the most in service."""

from services.router.decisions import Assign, Cancel
from services.router.preemption import Running, victim

from .builders import request, state, tokens
from .test_policy import GB, finish, policy


def test_the_victim_is_the_most_served_tenants_request_with_the_fewest_tokens_then_the_newest():
    in_service = {"big": 3, "mid": 2, "small": 0}
    running = [
        Running("b-old", "big", "w1", produced=2, accepted_at=1.0),
        Running("b-new", "big", "w1", produced=2, accepted_at=2.0),
        Running("b-long", "big", "w1", produced=9, accepted_at=3.0),
        Running("m", "mid", "w1", produced=0, accepted_at=4.0),
    ]
    assert victim("small", in_service, running).request_id == "b-new"


def test_no_victim_unless_a_tenant_holds_two_more_and_never_twice_or_the_waiting_tenants_own():
    running = [Running("b0", "big", "w1", 0, 1.0), Running("s0", "small", "w1", 0, 2.0)]
    assert victim("small", {"big": 2, "small": 1}, running) is None, "the swap would turn the order around"
    assert victim("small", {"big": 3, "small": 1}, running).request_id == "b0"
    assert victim("small", {"big": 3, "small": 1}, [Running("b0", "big", "w1", 0, 1.0, preempted=True)]) is None
    assert victim("big", {"big": 0}, [Running("b0", "big", "w1", 0, 1.0)]) is None


def _full_pool(preempt: bool):
    p = policy(max_running_per_worker=3, tenant_preemption=preempt)
    p.on_worker_state(state("w1", 1), now=0.0)
    for i in range(5):
        p.submit(request(f"big{i}", tenant="big"), now=0.1 + i / 100)
    p.on_tokens(tokens("big0", 0, (5, 6, 7), "w1"), now=0.2)  # big0 has made progress, big1 and big2 none
    return p


def test_a_waiting_tenant_takes_the_slot_of_the_newest_request_of_the_tenant_holding_the_pool():
    p = _full_pool(preempt=True)
    decisions = p.submit(request("small0", "b", tenant="small"), now=0.3)
    assert [(type(d).__name__, d.worker_id, getattr(d, "request_id", None) or d.request.id)
            for d in decisions if isinstance(d, (Cancel, Assign))] == [("Cancel", "w1", "big2"), ("Assign", "w1", "small0")]
    assert p.holder("big2") is None and p.holder("small0") == "w1"
    # Until the worker lets go of big2 it waits in no queue: placed again now, it could resume
    # from a prefix the old worker is still extending. Nor does the worker's report re-adopt it.
    assert p.snapshot(0.3).pending == 2
    p.on_worker_state(state("w1", 2, running=("big0", "big1", "big2")), now=0.4)
    assert p.holder("big2") is None and p.snapshot(0.4).pending == 2
    p.on_worker_state(state("w1", 3, running=("big0", "big1", "small0")), now=0.45)  # it let go
    assert p.snapshot(0.45).pending == 3, "big2 waits again, ahead of big3 and big4 (arrival order)"
    # A second small request: big holds 2, small 1 -> the swap would turn the order around.
    assert not [d for d in p.submit(request("small1", tenant="small"), now=0.5) if isinstance(d, Cancel)]
    assert finish(p, "small0", "w1", 0.6) == ["small1"], "small is the least served again"
    assert finish(p, "big0", "w1", 0.7) == ["big2"], "big2 is big's oldest waiting request"


def test_a_preempted_request_resumes_from_its_tokens_and_is_never_preempted_again():
    p = _full_pool(preempt=True)
    p.on_tokens(tokens("big1", 0, (8,), "w1"), now=0.25)
    p.on_tokens(tokens("big2", 0, (9, 9), "w1"), now=0.25)
    [cancel, _] = [d for d in p.submit(request("small0", "b", tenant="small"), now=0.3) if isinstance(d, (Cancel, Assign))]
    assert cancel.request_id == "big1", "big1 produced the fewest tokens (one)"
    p.on_worker_state(state("w1", 2, running=("big0", "big2", "small0")), now=0.4)  # it let go of big1
    resumed = [d for d in p.on_tokens(tokens("big0", 3, (), "w1", finish="stop"), now=0.5) if isinstance(d, Assign)]
    assert [(d.request.id, d.resume_token_ids) for d in resumed] == [("big1", (8,))]
    # big holds 2 (big1, big2) and small 1: a new tenant may preempt, but never big1 again.
    [cancel, assign] = [d for d in p.submit(request("tiny0", tenant="tiny"), now=0.6) if isinstance(d, (Cancel, Assign))]
    assert (cancel.request_id, assign.request.id) == ("big2", "tiny0")


def test_without_preemption_the_waiting_tenant_waits_for_a_free_slot():
    p = _full_pool(preempt=False)
    assert not [d for d in p.submit(request("small0", "b", tenant="small"), now=0.3) if isinstance(d, (Cancel, Assign))]
    assert finish(p, "big0", "w1", 0.4) == ["small0"]


def test_a_preempted_request_that_its_worker_finishes_or_a_dead_worker_leaves_is_not_lost():
    p = _full_pool(preempt=True)
    p.submit(request("small0", "b", tenant="small"), now=0.3)  # big2 preempted, not yet let go
    assert finish(p, "big2", "w1", 0.35) == [], "its last token came before the cancel: it is done"
    assert p.holder("big2") is None and p.snapshot(0.35).pending == 2

    q = _full_pool(preempt=True)
    q.submit(request("small0", "b", tenant="small"), now=0.3)
    q.on_worker_state(state("w2", 1), now=9.0)  # w1 falls silent; w2 arrives and takes big3, big4
    assert q.snapshot(9.0).pending == 0, "big2 waits for w1 to let go"
    assigned = [d.request.id for d in q.tick(now=9.5) if isinstance(d, Assign)]
    assert assigned == ["small0"] and q.snapshot(9.5).pending == 3, "w1 is gone: big0, big1 and big2 wait again"


def test_a_waiting_request_does_not_preempt_its_way_onto_a_worker_whose_round_is_full():
    """w1 holds model a's batch (three tenants, one request each), w2 three requests of big's
    model b. small's request of a finds no victim beside a's batch, and w2's round has no room
    for a turn of a (1 GB models: each step half of the TBT, test_policy), so it waits for a
    slot on w1 rather than take one of big's on w2. With light models w2's round has room."""
    for weight_bytes, preempts in ((GB, False), (GB // 10, True)):
        p = policy(max_running_per_worker=3, tenant_preemption=True)
        p.on_worker_state(state("w1", 1, weight_bytes=weight_bytes), now=0.0)
        p.on_worker_state(state("w2", 1, weight_bytes=weight_bytes), now=0.0)
        for i, tenant in enumerate(("x", "y", "z")):
            assert p.submit(request(f"{tenant}0", "a", tenant=tenant), now=0.1 + i / 100)[0].worker_id == "w1"
        for i in range(3):
            assert p.submit(request(f"big{i}", "b", tenant="big"), now=0.2 + i / 100)[0].worker_id == "w2"
        decisions = p.submit(request("small0", "a", tenant="small"), now=0.3)
        cancels = [d.request_id for d in decisions if isinstance(d, Cancel)]
        assert cancels == (["big2"] if preempts else [])
        if not preempts:
            assert finish(p, "x0", "w1", 0.4) == ["small0"]
