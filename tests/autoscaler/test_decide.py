"""The scaling planner on scripted ticks: bursts, idling, drains, steady load, attainment."""

import random

import pytest

from services.autoscaler.actions import Drain, Evict, Pin, Place, Release, ScaleUp, Undrain
from services.autoscaler.decide import decide
from services.autoscaler.scaling_config import ScalingConfig
from services.autoscaler.tick import InFlight, ModelInput, PlannerState, TickInput, WorkerInput
from services.autoscaler.windows import SlidingCounts

GB = 1 << 30
MODELS = ("a", "b", "c", "d")
CONFIG = ScalingConfig(cold_after_s=60, cooldown_s=30, scale_up_cooldown_s=15, drain_grace_s=20)
WINDOW = 30.0


def worker(worker_id, in_flight=(), host_gb=8, serving=MODELS, live=True):
    flights = tuple(InFlight(rid, m) for rid, m in in_flight)
    return WorkerInput(worker_id, live, serving, host_gb * GB, 40 * GB, (), flights)


def model(name, tokens=0, arrivals=None, in_flight=0):
    # step 0.02 s per 0.1 s TBT: 0.2 of a GPU while busy; 1 ms a token in the batch
    arrivals = (tokens + 99) // 100 if arrivals is None else arrivals
    return ModelInput(name, 2 * GB, arrivals, tokens, in_flight, decode_step_s=0.02, token_s=0.001, tbt_s=0.1)


def tick(now, workers, loads=None, attainment=None):
    loads = loads or {}
    models = tuple(model(m, **loads.get(m, {})) if isinstance(loads.get(m, {}), dict) else loads[m] for m in MODELS)
    return TickInput(now, WINDOW, models, tuple(workers), attainment)


def hosts(state, m):
    return sorted(w for w, models in state.placement.items() if m in models)


def run(ticks, state=None, config=CONFIG):
    state = state or PlannerState()
    log = []
    for t in ticks:
        actions, state = decide(t, state, config)
        log.append(actions)
    return log, state


def test_a_burst_on_a_model_with_no_room_asks_for_a_worker_and_is_placed_when_it_comes():
    # a, b, c are active and fill w1's host memory; d never ran, so it is on disk
    workers = [worker("w1", host_gb=6)]
    busy = {"a": {"tokens": 100}, "b": {"tokens": 100}, "c": {"tokens": 100}}  # 0.07 GPU each
    _, state = run([tick(t, workers, busy) for t in range(0, 10, 2)])
    assert hosts(state, "d") == []
    actions, state = decide(tick(10, workers, busy | {"d": {"tokens": 100, "in_flight": 3}}), state, CONFIG)
    assert all(hosts(state, m) == ["w1"] for m in "abc")  # no active model gives way
    assert [a.reason for a in actions if isinstance(a, ScaleUp)] == ["host memory: d fit on no kept worker"]
    workers.append(worker("w2", host_gb=6))
    actions, state = decide(tick(12, workers, busy | {"d": {"tokens": 100, "in_flight": 3}}), state, CONFIG)
    assert hosts(state, "d") == ["w2"] and Place("d", "w2", "placed") in actions


def test_a_burst_on_a_cold_model_is_placed_within_one_tick_in_room_a_cold_model_gives_up():
    workers = [worker("w1", host_gb=6)]
    early = {"a": {"tokens": 300}, "b": {"tokens": 300}, "c": {"tokens": 300}}
    _, state = run([tick(0, workers, early)])
    later = {"a": {"tokens": 300}, "b": {"tokens": 300}}  # c goes idle
    _, state = run([tick(t, workers, later) for t in range(2, 70, 2)], state)
    actions, state = decide(tick(70, workers, later | {"d": {"tokens": 3000}}), state, CONFIG)
    assert hosts(state, "d") == ["w1"] and hosts(state, "c") == []
    assert Evict("c", "w1", "cold") in actions and Place("d", "w1", "placed") in actions


def test_a_very_hot_model_gets_replicas_and_pins():
    workers = [worker(f"w{i}") for i in range(1, 4)]
    hot = {"a": {"tokens": 30 * 1200}}  # 1200 tok/s: 0.2 + 1.2 = 1.4 GPU -> 2 copies at fill 0.8
    log, state = run([tick(0, workers, hot)])
    assert len(hosts(state, "a")) == 2
    assert sum(isinstance(a, Place) and a.model == "a" and a.reason == "replica" for a in log[0]) >= 1
    assert {w for w, m in state.pins if m == "a"} == set(hosts(state, "a"))
    assert {x.worker_id for x in log[0] if isinstance(x, Pin)} == set(hosts(state, "a"))
    assert not any(m != "a" for _, m in state.pins)


def test_a_model_idle_for_the_cooldown_window_loses_its_replicas_then_its_pin():
    config = ScalingConfig(cold_after_s=60, cooldown_s=30, min_workers=3)  # the pool itself stays
    workers = [worker(f"w{i}") for i in range(1, 4)]
    _, state = run([tick(t, workers, {"a": {"tokens": 30 * 1200}}) for t in range(0, 20, 2)], config=config)
    assert len(hosts(state, "a")) == 2
    log, state = run([tick(t, workers, {"a": {"in_flight": 1}}) for t in range(20, 48, 2)], state, config)
    assert len(hosts(state, "a")) == 2  # quiet for 28 s < cooldown_s: the replica stays
    assert not any(isinstance(x, (Place, Evict)) for actions in log for x in actions)
    assert not any(m == "a" for _, m in state.pins)  # the pins follow demand at once
    log, state = run([tick(t, workers, {}) for t in range(48, 52, 2)], state, config)
    assert len(hosts(state, "a")) == 1
    assert sum(isinstance(x, Evict) and x.model == "a" for actions in log for x in actions) == 1
    log, state = run([tick(t, workers, {}) for t in range(52, 120, 2)], state, config)
    assert len(hosts(state, "a")) == 1  # cold: it keeps one copy while host memory has room


def workers_ids(workers):
    return [w.worker_id for w in workers]


def test_idle_models_consolidate_and_the_spare_workers_drain_and_release():
    # three models each busy enough for a worker of its own, then two go idle
    workers = [worker(f"w{i}") for i in range(1, 4)]
    busy = {m: {"tokens": 30 * 550} for m in "abc"}  # 0.2 + 0.55 = 0.75 GPU each
    _, state = run([tick(t, workers, busy) for t in range(0, 10, 2)])
    assert {m: len(hosts(state, m)) for m in "abc"} == {"a": 1, "b": 1, "c": 1}
    assert len({hosts(state, m)[0] for m in "abc"}) == 3
    quiet = {"a": {"tokens": 30 * 100}}
    log, state = run([tick(t, workers, quiet) for t in range(10, 200, 2)], state)
    drains = [a for actions in log for a in actions if isinstance(a, Drain)]
    releases = [a for actions in log for a in actions if isinstance(a, Release)]
    assert len(drains) == 2 and [r.reason for r in releases] == ["drained", "drained"]
    assert set(state.released) == {d.worker_id for d in drains}
    kept = [w for w in workers_ids(workers) if w not in state.released]
    assert len(kept) == 1 and hosts(state, "a") == kept
    assert set(state.placement[kept[0]]) >= {"a", "b", "c"}  # the idle models were kept on the one left


def test_a_drained_workers_requests_finish_or_move_and_none_is_dropped():
    config = ScalingConfig(cold_after_s=60, cooldown_s=30, scale_up_cooldown_s=15, drain_grace_s=20)
    light = {"a": {"tokens": 300, "in_flight": 2}, "b": {"tokens": 300, "in_flight": 1}}
    w1, w2 = worker("w1"), worker("w2")
    _, state = run([tick(0, [w1, w2], light)], config=config)
    # a sits on one worker and b on the other; the worker holding b drains though it runs requests
    b_on = hosts(state, "b")[0]
    held = [("r1", "b"), ("r2", "a"), ("r3", "b")]
    busier = [("r4", "a"), ("r5", "a"), ("r6", "a"), ("r7", "a")]  # so the worker holding b is the cheaper to drain
    workers = [worker(w, in_flight=held if w == b_on else busier) for w in ("w1", "w2")]
    log, state = run([tick(t, workers, light) for t in range(40, 56, 2)], state, config)
    drains = [a for actions in log for a in actions if isinstance(a, Drain)]
    assert [d.worker_id for d in drains] == [b_on]
    assert sorted(f.request_id for f in drains[0].requests) == ["r1", "r2", "r3"]
    assert all(f.fate == "finish" for f in drains[0].requests)
    assert state.placement[b_on] == frozenset({"a", "b"})  # kept until its requests finish
    other = "w2" if b_on == "w1" else "w1"
    assert hosts(state, "b") == sorted([b_on, other])  # ...and placed on the other worker too
    # the grace period runs out: every request moves to the kept worker, none dropped
    log, state = run([tick(t, workers, light) for t in range(56, 64, 2)], state, config)
    moved = [a for actions in log for a in actions if isinstance(a, Drain)]
    assert len(moved) == 1
    assert {(f.request_id, f.fate, f.to_worker) for f in moved[0].requests} == {
        ("r1", "move", other), ("r2", "move", other), ("r3", "move", other)}
    # once they are gone the worker is released
    workers = [worker(w, in_flight=() if w == b_on else busier) for w in ("w1", "w2")]
    actions, state = decide(tick(64, workers, light), state, config)
    assert Release(b_on, "drained") in actions and b_on not in state.placement


def test_no_flapping_under_steady_noisy_load():
    rng = random.Random(7)
    window = SlidingCounts(span_s=WINDOW, bucket_s=2)
    rates = {"a": 4.0, "b": 1.0, "c": 0.3, "d": 0.05}  # requests/s, 100 tokens each
    workers = [worker(f"w{i}") for i in range(1, 5)]
    state = PlannerState()
    changes = []
    for step in range(300):
        now = step * 2.0
        for m, rate in rates.items():
            n = sum(rng.random() < rate * 2 / 20 for _ in range(20))  # ~Poisson arrivals in 2 s
            if n:
                window.add(now, m, n, 100 * n)
        counts = window.totals(now)
        models = [model(m, tokens=counts.get(m, (0, 0))[1], arrivals=counts.get(m, (0, 0))[0]) for m in MODELS]
        actions, state = decide(TickInput(now, WINDOW, tuple(models), tuple(workers), 0.95), state, CONFIG)
        changes.append(len(actions))
    assert sum(changes[100:]) == 0, [(i + 100, c) for i, c in enumerate(changes[100:]) if c]
    assert len(state.released) == 2  # 1.2 GPUs of demand settle on two workers


def test_scale_up_when_attainment_falls_below_target_with_cooldown():
    workers = [worker("w1")]
    load = {"a": {"tokens": 300}}
    log, state = run([tick(t, workers, load, attainment=0.8) for t in range(0, 30, 2)])
    ups = [(t, a) for t, actions in zip(range(0, 30, 2), log) for a in actions if isinstance(a, ScaleUp)]
    assert [t for t, _ in ups] == [0, 16]  # once per scale_up_cooldown_s (15 s)
    assert "attainment 0.800 < target 0.9" in ups[0][1].reason
    # the new worker arrives and attainment recovers: no drain within the cooldown
    workers = [worker("w1"), worker("w2")]
    log, state = run([tick(t, workers, load, attainment=0.91) for t in range(30, 44, 2)], state)
    assert not any(isinstance(a, (ScaleUp, Drain)) for actions in log for a in actions)


def test_low_attainment_undrains_a_draining_worker_before_asking_for_a_new_one():
    workers = [worker("w1"), worker("w2", in_flight=[("r1", "a")])]
    load = {"a": {"tokens": 300}}
    state = PlannerState(draining={"w2": 0.0})
    actions, state = decide(tick(10, workers, load, attainment=0.5), state, CONFIG)
    assert Undrain("w2") in actions and not any(isinstance(a, ScaleUp) for a in actions)
    assert "w2" not in state.draining


def test_demand_beyond_the_pool_asks_for_more_workers():
    actions, state = decide(tick(0, [worker("w1")], {m: {"tokens": 30 * 1200} for m in "ab"}), PlannerState(), CONFIG)
    scale = [a for a in actions if isinstance(a, ScaleUp)]
    assert len(scale) == 1 and scale[0].count == 3 and "needs 4 workers" in scale[0].reason


def test_a_gone_draining_worker_is_released_and_its_models_placed_elsewhere():
    state = PlannerState(placement={"w1": frozenset({"a"}), "w2": frozenset({"b"})}, draining={"w2": 0.0})
    actions, state = decide(tick(5, [worker("w1"), worker("w2", live=False)], {"b": {"tokens": 300}}), state, CONFIG)
    assert Release("w2", "gone") in actions and hosts(state, "b") == ["w1"]


@pytest.mark.parametrize("field, value", [
    ("target_attainment", 1.5), ("fill", 0.0), ("low_water", 1.0), ("pin_share", -0.1),
    ("cooldown_s", -1.0), ("cold_after_s", float("nan")), ("min_workers", 0), ("max_workers", 0),
])
def test_bad_config_names_the_field(field, value):
    with pytest.raises(ValueError, match=f"^{field}="):
        ScalingConfig(**{field: value})


def test_bad_tick_input_says_what_is_wrong():
    with pytest.raises(ValueError, match="window_s"):
        TickInput(0, 0, (), ())
    with pytest.raises(ValueError, match="duplicate worker names.*w1"):
        TickInput(0, 30, (), (worker("w1"), worker("w1")))
    with pytest.raises(ValueError, match="model a: tokens=-1"):
        ModelInput("a", GB, tokens=-1)


def test_sliding_counts_forget_what_left_the_window():
    window = SlidingCounts(span_s=10, bucket_s=2)
    window.add(0.5, "a", 1, 100)
    window.add(5.0, "a", 2, 50)
    window.add(5.5, "b", 1, 10)
    assert window.totals(6.0) == {"a": (3, 150), "b": (1, 10)}
    assert window.totals(11.0) == {"a": (2, 50), "b": (1, 10)}
    assert window.totals(30.0) == {}
    with pytest.raises(ValueError, match="bucket_s"):
        SlidingCounts(span_s=5, bucket_s=10)
