"""From bus reports to the planner's TickInput (observe.py), and from the planner's state to the
Placement the router and workers read, and to bytes for the KV bucket (orders.py)."""

import math

import pytest

from services.autoscaler.actions import RequestFate
from services.autoscaler.observe import ModelFacts, Observations
from services.autoscaler.orders import decode_state, encode_state, placement_of
from services.autoscaler.tick import InFlight, PlannerState
from shared.protocol import (
    DrainOrder, ModelLoad, ModelResidency, RequestMove, RouterState, TurnReport, WorkerPlacement, WorkerState,
)

FACTS = {"a": ModelFacts(1000, 0.1), "b": ModelFacts(2000, 0.05, decode_step_s=0.01)}


def seen(**kw) -> Observations:
    return Observations(FACTS, **({"window_s": 60.0, "worker_timeout_s": 2.0, "host_bytes": 10_000, "gpu_bytes": 5_000} | kw))


def router(arrivals_a, tokens_a, queued=0, running=0, attainment=None, router_id="r1") -> RouterState:
    loads = (ModelLoad("a", queued, running, arrivals_a, tokens_a), ModelLoad("b", 0, 0, 0, 0), ModelLoad("x", 0, 0, 9, 9))
    return RouterState(router_id, True, (), loads, queued, 0.0, attainment)


def worker(worker_id="w1", seq=1, running=(), running_models=()) -> WorkerState:
    models = (ModelResidency("a", "device"), ModelResidency("b", "disk"), ModelResidency("x", "host"))
    return WorkerState(worker_id, True, ("a", "b", "x"), models, "a", running, 8, 8, "cpu", seq, float(seq),
                       running_models=running_models)


def test_windowed_arrivals_and_tokens_come_from_the_routers_cumulative_counters():
    s = seen()
    s.router(router(10, 100), now=0.0)  # what came before the autoscaler started counts too
    s.router(router(13, 160, queued=2, running=1), now=30.0)
    tick = s.tick(30.0)
    a, b = tick.models
    assert (a.name, a.arrivals, a.tokens, a.in_flight, a.bytes, a.tbt_s) == ("a", 13, 160, 3, 1000, 0.1)
    assert (b.arrivals, b.tokens, b.decode_step_s) == (0, 0, 0.01)
    assert [m.name for m in tick.models] == ["a", "b"]  # a model outside the catalog is left out
    assert s.tick(65.0).models[0].arrivals == 3  # the first 10 fell out of the 60 s window
    assert s.tick(95.0).models[0].arrivals == 0


def test_a_model_takes_the_most_host_memory_a_worker_reported_for_it():
    """A CPU worker holds weights in float32 plus packed copies: more than the checkpoint."""
    s = seen()
    models = (ModelResidency("a", "host", 16, 1000, 2600), ModelResidency("b", "host", 16, 2000, 0))
    s.worker(WorkerState("w1", True, ("a", "b"), models, None, (), 8, 8, "cpu", 1, 1.0), now=1.0)
    smaller = (ModelResidency("a", "host", 16, 1000, 1500),)
    s.worker(WorkerState("w2", True, ("a",), smaller, None, (), 8, 8, "cpu", 1, 1.0), now=1.0)
    a, b = s.tick(1.0).models
    assert a.bytes == 2600, "the largest report, not the checkpoint's 1000"
    assert b.bytes == 2000, "no report (0): the checkpoint's size"


def test_a_restarted_router_counts_from_zero_again():
    s = seen()
    s.router(router(50, 500), now=0.0)
    s.router(router(2, 20), now=1.0)
    assert s.tick(1.0).models[0].arrivals == 52


def test_workers_are_live_while_they_report_and_name_their_requests_models():
    s = seen()
    s.worker(worker(running=("q1", "q2"), running_models=("a", "b")), now=0.0)
    [w] = s.tick(1.0).workers
    assert w.live and w.serving == ("a", "b") and w.resident == ("a",)
    assert w.in_flight == (InFlight("q1", "a"), InFlight("q2", "b"))
    assert (w.host_bytes, w.gpu_bytes) == (10_000, 5_000)
    assert not s.tick(2.5).workers[0].live
    assert s.live_workers(1.0) == ["w1"] and s.live_workers(2.5) == []
    s.forget("w1")
    assert s.tick(1.0).workers == ()


def test_decode_step_time_follows_the_turn_reports():
    s = seen()
    assert s.tick(0.0).models[0].decode_step_s == 0.02  # the default until a report
    s.turn(TurnReport("w1", 1, "a", "done", 0.0, 0, 0, 0.0, 10, 10, 100, 0.5))
    assert s.tick(0.0).models[0].decode_step_s == pytest.approx(0.05)
    s.turn(TurnReport("w1", 2, "a", "done", 0.0, 0, 0, 0.0, 0, 0, 0, 0.0))  # no decode step: no news
    s.turn(TurnReport("w1", 3, "a", "done", 0.0, 0, 0, 0.0, 10, 10, 100, 1.5))
    assert s.tick(0.0).models[0].decode_step_s == pytest.approx(0.05 + 0.2 * (0.15 - 0.05))


def test_attainment_is_the_worst_live_routers():
    s = seen()
    assert s.tick(0.0).attainment is None
    s.router(router(1, 1, attainment=0.95), now=0.0)
    s.router(router(1, 1, attainment=0.8, router_id="r2"), now=0.0)
    assert s.tick(1.0).attainment == 0.8
    assert s.tick(5.0).attainment is None  # both routers went quiet


def test_placement_carries_the_states_models_pins_and_drains_and_counts_epochs():
    state = PlannerState(
        placement={"w1": frozenset({"b", "a"}), "w2": frozenset({"a"})},
        pins=frozenset({("w1", "a")}),
        draining={"w2": 5.0},
        fates={"w2": (RequestFate("q1", "a", "move", "w1"), RequestFate("q2", "a", "finish"))},
    )
    first = placement_of(state, None, now=7.0)
    assert first.epoch == 1 and first.ts == 7.0
    assert first.workers == (WorkerPlacement("w1", ("a", "b")), WorkerPlacement("w2", ("a",)))
    assert first.pins == (WorkerPlacement("w1", ("a",)),)
    assert first.drains == (DrainOrder("w2", (RequestMove("q1", "w1"), RequestMove("q2", ""))),)
    assert placement_of(state, first, now=8.0) is first  # nothing new: nothing to write
    undrained = PlannerState(placement=state.placement, pins=state.pins)
    second = placement_of(undrained, first, now=9.0)
    assert second.epoch == 2 and second.drains == ()


def test_planner_state_survives_the_kv_round_trip():
    state = PlannerState(
        placement={"w1": frozenset({"a", "b"})}, pins=frozenset({("w1", "a")}), draining={"w2": 5.0},
        fates={"w2": (RequestFate("q1", "a", "move", "w1"),)}, released={"w3": 1.0}, last_active={"a": 4.0},
        copies_justified_at={"a": 3.0}, started_at=0.5, scaled_up_at=2.0,
    )
    assert decode_state(encode_state(state)) == state
    fresh = decode_state(encode_state(PlannerState()))
    assert fresh == PlannerState() and fresh.scaled_down_at == -math.inf


@pytest.mark.parametrize("data, problem", [
    (b"\xc1", "not msgpack"),
    (b"\x93\x01\x02\x03", "version None"),
    (b"\x81\xa7version\x63", "version 99"),
    (b"\x81\xa7version\x01", "malformed"),
])
def test_a_stored_state_this_autoscaler_cannot_read_is_refused_with_the_reason(data, problem):
    with pytest.raises(ValueError, match=problem):
        decode_state(data)


def test_a_measured_share_replaces_the_token_paced_estimate_and_may_exceed_one_gpu():
    from services.autoscaler.demand import gpu_share
    from services.autoscaler.tick import ModelInput

    paced = ModelInput("a", 1, arrivals=10, tokens=600, decode_step_s=0.05, tbt_s=0.1)
    assert gpu_share(paced, window_s=60.0) == pytest.approx(0.5)  # busy all the time: one step per TBT
    assert gpu_share(ModelInput("a", 1, tokens=600, share=2.5), window_s=60.0) == 2.5
    with pytest.raises(ValueError, match="share=-1 must be >= 0"):
        ModelInput("a", 1, share=-1)
