"""The router under the autoscaler's orders (Placement in the KV bucket): drained workers take
no new request, a drained worker's requests move where the order says, resuming from their
tokens, placed workers are preferred; and what the router tells the autoscaler back
(requested tokens and SLO attainment in its RouterState)."""

from services.router.decisions import Assign, Cancel, Done
from shared.protocol import DrainOrder, Placement, RequestMove, WorkerPlacement

from .builders import request, state, tokens
from .test_policy import policy


def placement(epoch=1, workers=(), drains=()) -> Placement:
    return Placement(epoch, tuple(WorkerPlacement(w, tuple(m)) for w, m in workers), 0.0, drains=tuple(drains))


def two_workers():
    p = policy()
    p.on_worker_state(state("w1", 1), now=0.1)
    p.on_worker_state(state("w2", 1), now=0.1)
    return p


def test_a_drained_worker_takes_no_new_request():
    p = two_workers()
    p.on_placement(placement(drains=[DrainOrder("w1")]), now=0.2)
    for i in range(4):
        [d] = p.submit(request(f"r{i}", "abc"[i % 3]), now=0.3)
        assert d.worker_id == "w2"


def test_undrained_worker_takes_requests_again_and_a_new_report_keeps_the_drain():
    p = two_workers()
    p.on_placement(placement(drains=[DrainOrder("w1")]), now=0.2)
    p.on_worker_state(state("w1", 2), now=0.3)  # its own report does not undo the order
    assert p.submit(request("r1", "a"), now=0.3)[0].worker_id == "w2"
    p.on_placement(placement(epoch=2), now=0.4)
    assert p.submit(request("r2", "b"), now=0.5)[0].worker_id == "w1"  # w2 holds a: b spreads


def test_requests_wait_in_their_queue_while_every_worker_is_drained():
    p = two_workers()
    p.on_placement(placement(drains=[DrainOrder("w1"), DrainOrder("w2")]), now=0.2)
    assert p.submit(request("r1"), now=0.3) == []
    assert p.snapshot(0.3).pending == 1
    [d] = p.on_placement(placement(epoch=2, drains=[DrainOrder("w1")]), now=0.4)
    assert d == Assign("w2", request("r1"), ())


def test_a_move_cancels_the_request_where_it_runs_and_resumes_it_on_the_target():
    p = two_workers()
    [d] = p.submit(request("r1", "a"), now=0.2)
    source = d.worker_id
    target = "w2" if source == "w1" else "w1"
    p.on_tokens(tokens("r1", 0, (7, 8), worker=source), now=0.3)
    order = DrainOrder(source, (RequestMove("r1", target),))
    decisions = p.on_placement(placement(drains=[order]), now=0.4)
    assert decisions == [Cancel(source, "r1"), Assign(target, request("r1"), (7, 8))]
    assert p.holder("r1") == target
    # the same order read again (a KV redelivery, the next epoch) moves nothing twice
    assert p.on_placement(placement(epoch=2, drains=[order]), now=0.5) == []


def test_a_move_to_an_unknown_or_drained_worker_leaves_the_request_where_it_runs():
    p = two_workers()
    source = p.submit(request("r1", "a"), now=0.2)[0].worker_id
    target = "w2" if source == "w1" else "w1"
    assert p.on_placement(placement(drains=[DrainOrder(source, (RequestMove("r1", "w9"),))]), now=0.3) == []
    both = [DrainOrder(source, (RequestMove("r1", target),)), DrainOrder(target)]
    assert p.on_placement(placement(epoch=2, drains=both), now=0.4) == []
    assert p.holder("r1") == source
    finish_here = DrainOrder(source, (RequestMove("r1", ""),))
    assert p.on_placement(placement(epoch=3, drains=[finish_here]), now=0.5) == []
    assert p.holder("r1") == source


def test_a_new_model_goes_to_a_worker_the_autoscaler_placed_it_on():
    p = two_workers()
    p.on_placement(placement(workers=[("w1", "a"), ("w2", "bc")]), now=0.2)
    assert p.submit(request("r1", "b"), now=0.3)[0].worker_id == "w2"
    assert p.submit(request("r2", "a"), now=0.3)[0].worker_id == "w1"
    assert p.submit(request("r3", "c"), now=0.3)[0].worker_id == "w2"


def test_router_state_reports_requested_tokens_and_recent_attainment():
    p = policy(attainment_window_s=10.0)
    p.on_worker_state(state("w1", 1), now=0.0)
    assert p.snapshot(0.0).attainment is None  # nothing finished yet
    p.submit(request("r1", "a", max_tokens=5), now=0.0)
    p.submit(request("r2", "b", max_tokens=7), now=0.0)
    loads = {m.name: m for m in p.snapshot(0.1).models}
    assert (loads["a"].tokens, loads["b"].tokens, loads["c"].tokens) == (5, 7, 0)
    # r1 is on time (default SLO 10 s TTFT, 0.1 s TBT); r2's first token is 20 s late
    assert p.on_tokens(tokens("r1", 0, (1,), finish="stop"), now=1.0) == [Done("r1")]
    assert p.snapshot(1.0).attainment == 1.0
    p.on_tokens(tokens("r2", 0, (1,)), now=30.0)
    p.on_tokens(tokens("r2", 1, (2,), finish="length"), now=30.05)
    half = p.snapshot(30.05).attainment
    assert half is not None and half < 0.5
    assert p.snapshot(35.0).attainment < 0.5  # r1 finished more than 10 s ago: only r2 is left
    assert p.snapshot(41.0).attainment is None


def test_a_request_turned_away_counts_as_missed():
    p = policy(max_queue_per_model=0, max_running_per_worker=1)
    p.on_worker_state(state("w1", 1), now=0.0)
    p.submit(request("r1", "a"), now=0.0)
    [reject] = p.submit(request("r2", "a"), now=0.1)
    assert reject.error.code == 429
    assert p.snapshot(0.1).attainment == 0.0
    p.submit(request("r3", "zzz"), now=0.2)  # unknown model: the user's mistake, not a missed SLO
    assert p.snapshot(0.2).attainment == 0.0


def test_a_hot_models_replicas_share_its_requests_once_a_batch_is_full():
    p = policy(max_batch_size=2)
    for w in ("w1", "w2", "w3"):
        p.on_worker_state(state(w, 1), now=0.1)
    p.on_placement(placement(workers=[("w1", "a"), ("w2", "a"), ("w3", "b")]), now=0.2)
    holders = [p.submit(request(f"r{i}", "a"), now=0.3)[0].worker_id for i in range(6)]
    assert holders[:2] == [holders[0]] * 2  # one batch gathers on one replica first
    assert set(holders) == {"w1", "w2"}  # then spills to the other replica, never to w3
    assert holders.count("w1") + holders.count("w2") == 6


def test_without_replicas_a_model_stays_on_the_worker_holding_it():
    p = policy(max_batch_size=2)
    p.on_worker_state(state("w1", 1), now=0.1)
    p.on_worker_state(state("w2", 1), now=0.1)
    p.on_placement(placement(workers=[("w1", "a"), ("w2", "b")]), now=0.2)
    assert {p.submit(request(f"r{i}", "a"), now=0.3)[0].worker_id for i in range(5)} == {"w1"}
