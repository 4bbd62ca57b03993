"""The router policy's placement (which worker holds a request) driven by hand-built messages
and a scripted clock; turn scheduling has its own tests (test_turns.py)."""

import math

import pytest

from services.router.config import DEFAULT_SLOTS, PolicyConfig
from services.router.decisions import Assign, Cancel, Done, Reject, StartTurn
from services.router.policy import RouterPolicy

from .builders import MODELS, request, state, tokens


class PlacementOnly:
    """The policy with its StartTurn decisions left out."""

    EVENTS = ("submit", "on_worker_state", "on_tokens", "on_turn_report", "cancel", "tick", "on_placement")

    def __init__(self, policy: RouterPolicy):
        self.policy = policy

    def __getattr__(self, name):
        attr = getattr(self.policy, name)
        if name not in self.EVENTS:
            return attr
        return lambda *args, **kwargs: [d for d in attr(*args, **kwargs) if not isinstance(d, StartTurn)]


def policy(**config) -> PlacementOnly:
    return PlacementOnly(RouterPolicy(MODELS, PolicyConfig(**config), now=0.0))


def codes(decisions) -> list[int]:
    return [d.error.code for d in decisions if isinstance(d, Reject)]


def test_request_goes_to_the_reporting_worker():
    p = policy()
    p.on_worker_state(state("w1", 1), now=0.1)
    [d] = p.submit(request("r1"), now=0.2)
    assert d == Assign("w1", request("r1"), ())
    assert p.holder("r1") == "w1"


def test_request_goes_to_the_worker_with_its_model_warm():
    p = policy()
    p.on_worker_state(state("w1", 1, tiers={"a": "host"}), now=0.1)
    p.on_worker_state(state("w2", 1, active="b", tiers={"b": "device"}), now=0.1)
    p.on_worker_state(state("w3", 1, active="a", tiers={"a": "device"}), now=0.1)
    assert p.submit(request("r1", "a"), now=0.2)[0].worker_id == "w3"
    assert p.submit(request("r2", "b"), now=0.2)[0].worker_id == "w2"
    assert p.submit(request("r3", "c"), now=0.2)[0].worker_id == "w1"  # all cold: least loaded


def test_a_models_requests_gather_on_the_worker_holding_it_and_new_models_spread():
    p = policy()
    p.on_worker_state(state("w1", 1), now=0.1)
    p.on_worker_state(state("w2", 1, active="a", tiers={"a": "device", "b": "device"}), now=0.1)
    assert p.submit(request("r1", "a"), now=0.2)[0].worker_id == "w2"  # equal demand: warm wins
    # w2 now spends time on a; b goes to the idle worker although w2 has b resident
    assert p.submit(request("r2", "b"), now=0.2)[0].worker_id == "w1"
    # a second request of b joins r2's batch on w1 rather than costing w2 a turn of b
    assert p.submit(request("r3", "b"), now=0.3)[0].worker_id == "w1"
    assert p.submit(request("r4", "a"), now=0.3)[0].worker_id == "w2"


GB = 1_000_000_000


@pytest.mark.parametrize("weight_bytes, limit, spills", [(GB, 0.6, False), (GB, math.inf, True), (GB // 10, 0.6, True)])
def test_a_model_held_on_a_full_worker_waits_there_unless_another_round_has_room(weight_bytes, limit, spills):
    """The router's CPU priors make one step of a 1 GB model 50 ms: half of a 100 ms TBT, so a
    worker holding b has no room for a turn of a as well (round load 1.05). A request of a then
    waits for a slot beside a's batch instead of adding a to w2's round. With a lighter model,
    or no limit, it goes to w2's free slot at once. A model nobody holds opens anywhere."""
    p = policy(max_running_per_worker=2, max_round_load=limit)
    p.on_worker_state(state("w1", 1, weight_bytes=weight_bytes), now=0.0)
    p.on_worker_state(state("w2", 1, weight_bytes=weight_bytes), now=0.0)
    assert [p.submit(request(rid, model), now=0.1)[0].worker_id for rid, model in (("a1", "a"), ("b1", "b"), ("a2", "a"))] \
        == ["w1", "w2", "w1"]
    placed = [d.worker_id for d in p.submit(request("a3", "a"), now=0.2) if isinstance(d, Assign)]
    assert placed == (["w2"] if spills else [])
    if not spills:
        assert finish(p, "a1", "w1", 0.3) == ["a3"], "the first slot freed beside a's batch"
        assert p.holder("a3") == "w1"
        assert p.submit(request("c1", "c"), now=0.4)[0].worker_id == "w2", "nobody holds c: it opens on the free slot"


def test_a_model_that_alone_needs_more_than_the_limit_still_spills_to_an_idle_worker():
    """A 1.5 GB model's step is 0.75 of the TBT under the CPU priors: above the 0.6 limit on
    its own, so no busy worker could take it, but an idle one can only help."""
    p = policy(max_running_per_worker=2)
    p.on_worker_state(state("w1", 1, weight_bytes=3 * GB // 2), now=0.0)
    p.on_worker_state(state("w2", 1, weight_bytes=3 * GB // 2), now=0.0)
    placed = [p.submit(request(f"a{i}", "a"), now=0.1 + i / 100)[0].worker_id for i in range(3)]
    assert placed == ["w1", "w1", "w2"]


def test_unknown_model_gets_404_naming_the_known_ones():
    p = policy()
    p.on_worker_state(state("w1", 1), now=0.1)
    [d] = p.submit(request("r1", "nope"), now=0.2)
    assert d.error.code == 404
    assert "'nope'" in d.error.message and "a, b, c" in d.error.message


def test_full_workers_queue_requests_fcfs_and_assign_as_slots_free():
    p = policy(max_running_per_worker=1)
    p.on_worker_state(state("w1", 1), now=0.0)
    assert isinstance(p.submit(request("r1"), now=0.1)[0], Assign)
    assert p.submit(request("r2"), now=0.2) == []
    assert p.submit(request("r3", "b"), now=0.3) == []
    assert p.snapshot(0.3).pending == 2
    done_and_next = p.on_tokens(tokens("r1", 0, (7,), "w1", finish="stop"), now=0.4)
    assert done_and_next == [Done("r1"), Assign("w1", request("r2"), ())]
    assert p.on_tokens(tokens("r2", 0, (7,), "w1", finish="length"), now=0.5)[1].request.id == "r3"


def finish(p, rid: str, worker: str, now: float):
    return [d.request.id for d in p.on_tokens(tokens(rid, 0, (7,), worker, finish="stop"), now=now) if isinstance(d, Assign)]


@pytest.mark.parametrize("fair", [True, False])
def test_a_full_pool_gives_the_next_slot_to_the_tenant_with_the_fewest_in_service(fair):
    """Tenant "big" fills the pool and queues a burst; "small" asks once, later. Fair: small's
    request takes the next free slot. FCFS (the baseline): it waits for the whole burst."""
    p = policy(max_running_per_worker=2, tenant_fairness=fair)
    p.on_worker_state(state("w1", 1), now=0.0)
    for i in range(6):
        p.submit(request(f"big{i}", tenant="big"), now=0.1 + i / 100)
    p.submit(request("small0", "b", tenant="small"), now=0.2)

    order = finish(p, "big0", "w1", 0.3) + finish(p, "big1", "w1", 0.4) + finish(p, "big2", "w1", 0.5)
    if fair:
        assert order == ["small0", "big2", "big3"]
    else:
        assert order == ["big2", "big3", "big4"]


def test_tenants_with_as_many_in_service_go_oldest_first():
    p = policy(max_running_per_worker=2)
    p.on_worker_state(state("w1", 1), now=0.0)
    for rid, at in (("x0", 0.1), ("x1", 0.2), ("x2", 0.3)):
        p.submit(request(rid, tenant="x"), now=at)  # x0 and x1 in service
    p.submit(request("y0", tenant="y"), now=0.4)
    p.submit(request("z0", "b", tenant="z"), now=0.5)
    assert finish(p, "x0", "w1", 0.6) == ["y0"], "x still has one in service; y and z none: the older"
    assert finish(p, "x1", "w1", 0.7) == ["x2"], "x, z: none in service; x2 is older than z0"
    assert finish(p, "x2", "w1", 0.8) == ["z0"]


def test_a_tenant_at_its_share_of_the_pool_waits_while_slots_are_free():
    p = policy(max_running_per_worker=2, max_tenant_share=0.5)
    p.on_worker_state(state("w1", 1), now=0.0)
    p.on_worker_state(state("w2", 1), now=0.0)  # 4 slots: a tenant may hold 2
    placed = [d for i in range(4) for d in p.submit(request(f"big{i}", tenant="big"), now=0.1 + i / 100)]
    assert [d.request.id for d in placed if isinstance(d, Assign)] == ["big0", "big1"]
    assert p.snapshot(0.2).pending == 2, "two slots stay free for the others"
    [small] = p.submit(request("small0", tenant="small"), now=0.3)
    assert isinstance(small, Assign)
    [unnamed] = p.submit(request("anon0"), now=0.4)
    assert isinstance(unnamed, Assign), "requests without a tenant are never capped"
    assert finish(p, "big0", "w1", 0.5) + finish(p, "big1", "w2", 0.6) == ["big2", "big3"]


def test_max_tenant_share_out_of_range_is_refused():
    with pytest.raises(ValueError, match=r"max_tenant_share must be in \(0, 1\], got 0"):
        PolicyConfig(max_tenant_share=0)


def test_requests_without_a_tenant_share_one_and_stay_fcfs():
    p = policy(max_running_per_worker=1)
    p.on_worker_state(state("w1", 1), now=0.0)
    for i in range(4):
        p.submit(request(f"r{i}", ("a", "b")[i % 2]), now=0.1 * (i + 1))
    assert finish(p, "r0", "w1", 1.0) + finish(p, "r1", "w1", 1.1) + finish(p, "r2", "w1", 1.2) == ["r1", "r2", "r3"]


def test_each_worker_takes_as_many_requests_as_it_says_unless_the_router_sets_a_number():
    p = policy()
    p.on_worker_state(state("small", 1, max_running=1), now=0.0)
    p.on_worker_state(state("big", 1, max_running=3), now=0.0)
    held = [d.worker_id for i in range(5) for d in p.submit(request(f"r{i}"), now=0.1) if isinstance(d, Assign)]
    assert sorted(held) == ["big", "big", "big", "small"] and p.snapshot(0.1).pending == 1

    fixed = policy(max_running_per_worker=2)
    fixed.on_worker_state(state("small", 1, max_running=1), now=0.0)
    held = [d.worker_id for i in range(3) for d in fixed.submit(request(f"r{i}"), now=0.1) if isinstance(d, Assign)]
    assert held == ["small", "small"], "the router's setting overrides the worker's word"

    silent = policy()
    silent.on_worker_state(state("old", 1), now=0.0)  # reports no number: the router's default
    held = [d for i in range(40) for d in silent.submit(request(f"r{i}"), now=0.1) if isinstance(d, Assign)]
    assert len(held) == DEFAULT_SLOTS


def test_queue_beyond_the_limit_gets_429():
    p = policy(max_running_per_worker=1, max_queue_per_model=2)
    p.on_worker_state(state("w1", 1), now=0.0)
    for i in range(3):
        p.submit(request(f"r{i}"), now=0.1)
    [d] = p.submit(request("r3"), now=0.1)
    assert d.error.code == 429 and "retry later" in d.error.message
    assert p.submit(request("r4", "b"), now=0.1) == []  # other models have their own queue


def test_requests_wait_for_workers_during_the_grace_period_then_get_503():
    p = policy(no_worker_grace_s=5.0)
    assert p.submit(request("r1"), now=1.0) == []
    assert p.tick(now=4.9) == []
    [d] = p.tick(now=5.0)
    assert d.error.code == 503 and d.index == 0
    [d] = p.submit(request("r2"), now=5.1)
    assert d.error.code == 503  # no worker for longer than the grace: answer at once


def test_a_worker_appearing_within_the_grace_period_gets_the_queued_requests():
    p = policy()
    p.submit(request("r1"), now=0.5)
    assert p.on_worker_state(state("w1", 1), now=1.0) == [Assign("w1", request("r1"), ())]


def test_model_no_live_worker_serves_gets_503_once_the_grace_is_over():
    p = policy(no_worker_grace_s=5.0)
    p.on_worker_state(state("w1", 1, serving=("a",)), now=0.0)
    assert p.submit(request("r1", "b"), now=1.0) == []  # a worker serving b may still be starting
    p.on_worker_state(state("w1", 2, serving=("a",)), now=5.5)
    assert codes(p.submit(request("r2", "b"), now=6.0)) == [503]
    assert codes(p.tick(now=6.0)) == [503]


def test_dead_worker_requests_resume_on_another_worker_with_their_tokens():
    p = policy(worker_timeout_s=2.0)
    p.on_worker_state(state("w1", 1, active="a"), now=0.0)
    p.on_worker_state(state("w2", 1), now=0.0)
    assert p.submit(request("r1"), now=0.1)[0].worker_id == "w1"
    # chunks out of order and duplicated: the resume prefix is gap-free and de-duplicated
    for chunk in [tokens("r1", 0, (10, 11), "w1"), tokens("r1", 3, (13,), "w1"), tokens("r1", 0, (10,), "w1")]:
        assert p.on_tokens(chunk, now=0.2) == []
    p.on_tokens(tokens("r1", 2, (12,), "w1"), now=0.3)
    p.on_worker_state(state("w2", 2), now=1.5)
    assert p.tick(now=2.0) == []
    p.on_worker_state(state("w2", 3), now=2.1)
    [d] = p.tick(now=2.1)
    assert d == Assign("w2", request("r1"), (10, 11, 12, 13))
    assert p.snapshot(2.1).workers == ("w2",)


def test_dead_worker_with_no_replacement_ends_its_requests_with_503_at_the_next_token():
    p = policy(worker_timeout_s=2.0, no_worker_grace_s=5.0)
    p.on_worker_state(state("w1", 1), now=0.0)
    p.submit(request("r1"), now=0.1)
    p.on_tokens(tokens("r1", 0, (10, 11), "w1"), now=0.2)
    assert p.tick(now=2.5) == []  # queued: a worker may come back within the grace
    [d] = p.tick(now=5.0)
    assert d.error.code == 503 and d.index == 2 and d.request.id == "r1"


def test_cancel_stops_the_worker_and_finishes_the_request():
    p = policy(max_running_per_worker=1)
    p.on_worker_state(state("w1", 1), now=0.0)
    p.submit(request("r1"), now=0.1)
    p.submit(request("r2"), now=0.1)
    assert p.cancel("r1", now=0.2) == [Cancel("w1", "r1"), Done("r1"), Assign("w1", request("r2"), ())]
    assert p.on_tokens(tokens("r1", 0, (1,), "w1", finish="stop"), now=0.3) == []  # late chunk: ignored


def test_cancel_of_a_queued_request_finishes_it_without_a_worker():
    p = policy()
    p.submit(request("r1"), now=0.1)
    assert p.cancel("r1", now=0.2) == [Done("r1")]
    assert p.snapshot(0.2).pending == 0


def test_cancel_that_overtakes_its_request_keeps_it_from_running():
    p = policy()
    p.on_worker_state(state("w1", 1), now=0.0)
    assert p.cancel("r1", now=0.1) == []
    assert p.submit(request("r1"), now=0.2) == [Done("r1")]


def test_redelivered_request_is_not_run_twice():
    p = policy()
    p.on_worker_state(state("w1", 1), now=0.0)
    p.submit(request("r1"), now=0.1)
    assert p.submit(request("r1"), now=0.2) == []
    p.on_tokens(tokens("r1", 0, (1,), "w1", finish="stop"), now=0.3)
    assert p.submit(request("r1"), now=0.4) == [Done("r1")]


def test_error_chunk_from_the_worker_finishes_the_request():
    p = policy()
    p.on_worker_state(state("w1", 1), now=0.0)
    p.submit(request("r1"), now=0.1)
    chunk = tokens("r1", 0, (), "w1")
    from dataclasses import replace

    from shared.protocol import ErrorInfo

    assert p.on_tokens(replace(chunk, error=ErrorInfo(400, "invalid_request", "too long")), now=0.2) == [Done("r1")]


def test_reordered_old_report_is_dropped():
    p = policy()
    p.on_worker_state(state("w1", 5, ready=True), now=0.0)
    p.on_worker_state(state("w1", 4, ready=False), now=0.1)
    assert isinstance(p.submit(request("r1"), now=0.2)[0], Assign)


def test_restarted_worker_gets_back_the_requests_it_lost():
    p = policy()
    p.on_worker_state(state("w1", 50, ts=100.0), now=0.0)
    p.submit(request("r1"), now=0.1)
    p.on_tokens(tokens("r1", 0, (9,), "w1"), now=0.2)
    [d] = p.on_worker_state(state("w1", 1, ts=200.0), now=0.5)  # seq went back, clock went on
    assert d == Assign("w1", request("r1"), (9,))


def test_request_a_worker_stops_listing_is_assigned_again():
    p = policy(lost_after_reports=3)
    p.on_worker_state(state("w1", 1), now=0.0)
    p.submit(request("r1"), now=0.1)
    assert p.on_worker_state(state("w1", 2), now=0.5) == []
    assert p.on_worker_state(state("w1", 3, running=("r1",)), now=1.0) == []
    assert p.on_worker_state(state("w1", 4), now=1.5) == []
    assert p.on_worker_state(state("w1", 5), now=2.0) == []
    assert p.on_worker_state(state("w1", 6), now=2.5) == [Assign("w1", request("r1"), ())]


def test_a_restarted_router_adopts_requests_workers_already_run():
    p = policy(max_running_per_worker=2)
    p.on_worker_state(state("w1", 1, running=("old1", "old2")), now=0.0)
    assert p.submit(request("new"), now=0.1) == []  # w1 is full with requests the router will get back
    assert p.submit(request("old1"), now=0.2) == []  # redelivered: w1 runs it, no second run
    assert p.holder("old1") == "w1"
    assert p.on_tokens(tokens("old1", 5, (1,), "w1", finish="stop"), now=0.3) == [
        Done("old1"),
        Assign("w1", request("new"), ()),
    ]


def test_a_worker_back_from_the_dead_drops_its_stale_copy():
    p = policy(worker_timeout_s=2.0)
    p.on_worker_state(state("w1", 1), now=0.0)
    p.on_worker_state(state("w2", 1, tiers={"a": "disk"}), now=0.0)
    p.submit(request("r1"), now=0.1)
    holder = p.holder("r1")
    other = "w2" if holder == "w1" else "w1"
    p.on_worker_state(state(other, 2), now=2.0)
    assert p.tick(now=2.5)[0].worker_id == other
    stale = p.on_worker_state(state(holder, 2, running=("r1",)), now=3.0)
    assert stale == [Cancel(holder, "r1")]
    assert p.on_worker_state(state(holder, 3, running=("r1",)), now=3.5) == []  # said once
    assert p.holder("r1") == other


def test_requests_are_served_first_come_first_served_across_models():
    p = policy(max_running_per_worker=1)
    p.on_worker_state(state("w1", 1), now=0.0)
    p.submit(request("r0"), now=0.0)
    p.submit(request("rb", "b"), now=0.1)
    p.submit(request("ra", "a"), now=0.2)
    assert p.on_tokens(tokens("r0", 0, (1,), "w1", finish="stop"), now=0.3)[1].request.id == "rb"


def test_snapshot_reports_load_per_model():
    p = policy(max_running_per_worker=1)
    p.on_worker_state(state("w1", 1), now=0.0)
    p.submit(request("r1"), now=0.1)
    p.submit(request("r2"), now=0.1)
    p.submit(request("r3", "b"), now=0.1)
    snap = p.snapshot(0.2)
    loads = {m.name: (m.queued, m.running, m.arrivals) for m in snap.models}
    assert loads == {"a": (1, 1, 2), "b": (1, 0, 1), "c": (0, 0, 0)}
    assert snap.ready and snap.workers == ("w1",) and snap.pending == 2


@pytest.mark.parametrize(
    "field, value, hint",
    [
        ("worker_timeout_s", 0, "2.0 is a good value"),
        ("max_running_per_worker", 0, ">= 1"),
        ("max_queue_per_model", -1, "0 rejects"),
        ("max_round_load", 0, "1.0: a round that just keeps its TBT"),
    ],
)
def test_bad_policy_config_says_how_to_fix_it(field, value, hint):
    with pytest.raises(ValueError, match=hint):
        PolicyConfig(**{field: value})
