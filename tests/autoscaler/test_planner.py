"""The placement planner on hand-built worker states and loads."""

from services.autoscaler.planner import plan
from shared.protocol import ModelLoad, ModelResidency, Placement, WorkerPlacement, WorkerState

GB = 1 << 30
SIZES = {"a": 2 * GB, "b": 2 * GB, "c": 2 * GB}


def worker(worker_id: str, serving=("a", "b", "c"), host=()) -> WorkerState:
    models = tuple(ModelResidency(m, "host") for m in host)
    return WorkerState(worker_id, True, serving, models, None, (), 10, 10, "cpu", 1, 0.0)


def load(name: str, arrivals=0, queued=0, running=0) -> ModelLoad:
    return ModelLoad(name, queued, running, arrivals)


def hosts(placement: Placement) -> dict[str, tuple[str, ...]]:
    return {w.worker_id: w.models for w in placement.workers}


def copies(placement: Placement, model: str) -> int:
    return sum(model in w.models for w in placement.workers)


def test_every_model_lands_on_a_worker_within_its_budget():
    p = plan([worker("w1"), worker("w2")], [], SIZES, 4 * GB, None, now=1.0)
    assert p.epoch == 1 and p.ts == 1.0
    assert all(copies(p, m) >= 1 for m in SIZES)
    assert all(len(models) <= 2 for models in hosts(p).values())


def test_hot_model_goes_on_more_workers():
    workers = [worker("w1"), worker("w2"), worker("w3")]
    loads = [load("a", arrivals=30, queued=5), load("b", arrivals=1), load("c")]
    p = plan(workers, loads, SIZES, 4 * GB, None, now=0.0)
    assert copies(p, "a") == 3
    assert copies(p, "b") >= 1 and copies(p, "c") >= 1


def test_a_worker_only_gets_models_it_serves():
    p = plan([worker("w1", serving=("a",)), worker("w2", serving=("b", "c"))], [], SIZES, 8 * GB, None, now=0.0)
    assert hosts(p) == {"w1": ("a",), "w2": ("b", "c")}


def test_unchanged_inputs_keep_the_previous_placement_and_its_epoch():
    workers = [worker("w1"), worker("w2")]
    first = plan(workers, [], SIZES, 4 * GB, None, now=0.0)
    assert plan(workers, [], SIZES, 4 * GB, first, now=5.0) is first


def test_previous_placement_is_kept_where_still_valid():
    previous = Placement(3, (WorkerPlacement("w1", ("a", "b")), WorkerPlacement("w2", ("c",))), 0.0)
    p = plan([worker("w1"), worker("w2")], [load("c", arrivals=1)], SIZES, 4 * GB, previous, now=1.0)
    assert hosts(p)["w1"] == ("a", "b")  # not reshuffled although c is now the hottest


def test_models_of_a_departed_worker_move_to_a_live_one():
    previous = Placement(3, (WorkerPlacement("w1", ("a",)), WorkerPlacement("w2", ("b", "c"))), 0.0)
    p = plan([worker("w1")], [], SIZES, 6 * GB, previous, now=1.0)
    assert p.epoch == 4 and hosts(p) == {"w1": ("a", "b", "c")}


def test_a_new_worker_keeps_what_it_already_has_in_host_memory():
    p = plan([worker("w1", host=("c",)), worker("w2", host=("a", "b"))], [], SIZES, 4 * GB, None, now=0.0)
    assert hosts(p) == {"w1": ("c",), "w2": ("a", "b")}


def test_a_spare_copy_makes_room_for_a_model_placed_nowhere():
    previous = Placement(1, (WorkerPlacement("w1", ("a", "b")), WorkerPlacement("w2", ("a", "b"))), 0.0)
    p = plan([worker("w1"), worker("w2")], [load("a", arrivals=5)], SIZES, 4 * GB, previous, now=1.0)
    assert copies(p, "c") == 1 and copies(p, "a") == 2
    assert p.epoch == 2


def test_a_model_too_big_for_any_budget_is_left_out_and_the_rest_placed():
    sizes = SIZES | {"huge": 100 * GB}
    p = plan([worker("w1", serving=("a", "b", "c", "huge"))], [load("huge", queued=9)], sizes, 6 * GB, None, now=0.0)
    assert hosts(p) == {"w1": ("a", "b", "c")}


def test_budget_shrink_drops_models_until_they_fit():
    previous = Placement(1, (WorkerPlacement("w1", ("a", "b", "c")),), 0.0)
    p = plan([worker("w1")], [], SIZES, 4 * GB, previous, now=1.0)
    assert len(hosts(p)["w1"]) == 2


def test_no_workers_gives_an_empty_placement():
    p = plan([], [load("a", queued=3)], SIZES, 4 * GB, None, now=0.0)
    assert p.workers == ()
