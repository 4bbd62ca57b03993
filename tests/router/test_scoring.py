"""Filter, scorers and picker, one table each."""

import pytest

from services.router import scoring
from services.router.config import PolicyConfig, ScoreWeights
from services.router.views import WorkerView

from .builders import state

CONFIG = PolicyConfig(max_running_per_worker=4)


def view(worker_id="w", load=0, **kw) -> WorkerView:
    v = WorkerView.from_state(state(worker_id, 1, **kw), now=0.0)
    v.assigned = {f"r{i}" for i in range(load)}
    return v


@pytest.mark.parametrize(
    "kw, load, model, expected",
    [
        ({}, 0, "a", True),
        ({"ready": False}, 0, "a", False),
        ({"serving": ("b",)}, 0, "a", False),
        ({}, 3, "a", True),
        ({}, 4, "a", False),
    ],
)
def test_filter(kw, load, model, expected):
    assert scoring.can_take(view(load=load, **kw), model, CONFIG) is expected


@pytest.mark.parametrize(
    "active, tier, expected",
    [
        ("a", "device", 1.0),
        ("b", "device", 0.8),
        (None, "host", 0.5),
        (None, "disk", 0.0),
        (None, None, 0.0),
    ],
)
def test_warmth(active, tier, expected):
    tiers = {"a": tier} if tier else {}
    assert scoring.warmth(view(active=active, tiers=tiers), "a", CONFIG) == expected


@pytest.mark.parametrize("load, expected", [(0, 1.0), (1, 0.75), (2, 0.5), (4, 0.0)])
def test_free_slots(load, expected):
    assert scoring.free_slots(view(load=load), "a", CONFIG) == expected


def test_free_slots_counts_requests_the_router_did_not_assign():
    v = view(load=1)
    v.foreign = 1
    assert scoring.free_slots(v, "a", CONFIG) == 0.5


@pytest.mark.parametrize("free, total, expected", [(100, 100, 1.0), (25, 100, 0.25), (0, 100, 0.0), (0, 0, 0.0)])
def test_kv_headroom(free, total, expected):
    assert scoring.kv_headroom(view(free=free, total=total), "a", CONFIG) == expected


@pytest.mark.parametrize(
    "workers, expected",
    [
        # warm beats idle
        ([view("w1", tiers={"a": "host"}), view("w2", load=1, active="a")], "w2"),
        # host-cached beats cold
        ([view("w1"), view("w2", tiers={"a": "host"})], "w2"),
        # equal warmth: least loaded
        ([view("w1", load=2), view("w2", load=1)], "w2"),
        # all equal: smallest id
        ([view("w2"), view("w1")], "w1"),
        # a full worker is never picked, however warm
        ([view("w1", load=4, active="a"), view("w2")], "w2"),
        ([view("w1", load=4)], None),
        ([], None),
    ],
)
def test_pick(workers, expected):
    picked = scoring.pick(workers, "a", CONFIG)
    assert (picked.worker_id if picked else None) == expected


def test_weights_come_from_config():
    warm_but_busy = view("w1", load=3, active="a")
    idle_cold = view("w2")
    assert scoring.pick([warm_but_busy, idle_cold], "a", CONFIG).worker_id == "w1"
    load_first = PolicyConfig(max_running_per_worker=4, weights=ScoreWeights(warmth=0.1, load=1.0, kv_headroom=0))
    assert scoring.pick([warm_but_busy, idle_cold], "a", load_first).worker_id == "w2"


def test_negative_weight_is_refused_with_a_hint():
    with pytest.raises(ValueError, match="0 switches the scorer off"):
        ScoreWeights(load=-1)
