"""Turn quotas follow Aegaeon's formula and keep every model within its TBT over a round."""

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.router.slo.estimators import StepTimeModel, SwitchTimeModel, roofline_step_model
from services.router.slo.quota import TurnInput, decode_quotas, overloaded, round_load


def test_quotas_follow_the_formula():
    turns = [TurnInput("a", step_s=0.02, switch_s=0.3, tbt_s=0.1), TurnInput("b", step_s=0.05, switch_s=0.5, tbt_s=0.1)]
    n = {"a": 5.0, "b": 2.0}
    c, inv = 0.8, 1 / 5 + 1 / 2
    alpha = max(c / (2.0 * 4.0) + inv, 0.5)
    quotas = decode_quotas(turns, max_quota_s=4.0)
    assert quotas == pytest.approx({m: c / (n[m] * (alpha - inv)) for m in n})
    assert quotas["b"] == pytest.approx(4.0)  # fewest tokens per period: the longest turn allowed


def test_alpha_floor_of_one_half():
    turns = [TurnInput("a", 0.001, 0.01, 0.1), TurnInput("b", 0.001, 0.01, 0.1)]
    quotas = decode_quotas(turns, max_quota_s=10.0)
    assert quotas["a"] == pytest.approx(0.02 / (100 * (0.5 - 0.02)))


def test_a_lone_model_never_switches_and_free_switches_rotate_every_step():
    assert decode_quotas([TurnInput("a", 0.02, 0.3, 0.1)], 4.0) == {"a": math.inf}
    assert decode_quotas([TurnInput("a", 0.02, 0.0, 0.1), TurnInput("b", 0.03, 0.0, 0.1)], 4.0) == {"a": 0.02, "b": 0.03}


@pytest.mark.parametrize(
    "turn, message",
    [(TurnInput("a", 0, 0.1, 0.1), "step_s"), (TurnInput("a", 0.1, -1, 0.1), "switch_s"), (TurnInput("a", 0.1, 0.1, 0), "tbt_s")],
)
def test_bad_inputs_name_the_field(turn, message):
    with pytest.raises(ValueError, match=message):
        decode_quotas([turn, TurnInput("b", 0.1, 0.1, 0.1)], 4.0)
    with pytest.raises(ValueError, match="max_quota_s"):
        decode_quotas([TurnInput("b", 0.1, 0.1, 0.1)], 0)


turn_inputs = st.lists(
    st.builds(
        TurnInput,
        model=st.uuids().map(str),
        step_s=st.floats(0.001, 0.09),
        switch_s=st.floats(0.001, 2.0),
        tbt_s=st.just(0.1),
    ),
    min_size=2,
    max_size=8,
)


@given(turn_inputs, st.floats(0.5, 20.0))
def test_every_model_banks_enough_tokens_for_the_round_unless_overloaded(turns, max_quota):
    quotas = decode_quotas(turns, max_quota)
    assert all(0 < q <= max_quota * (1 + 1e-9) for q in quotas.values())
    round_s = sum(quotas.values()) + sum(t.switch_s for t in turns)
    inverse_sum = sum(t.step_s / t.tbt_s for t in turns)
    fewest = min(t.tbt_s / t.step_s for t in turns)
    load = round_load(turns, max_quota)
    assert load == pytest.approx(sum(t.switch_s for t in turns) / (fewest * max_quota) + inverse_sum)
    for t in turns:
        banked = quotas[t.model] / t.step_s
        due = round_s / t.tbt_s
        if load <= 1:
            assert banked >= due * (1 - 1e-9), "a round within its load keeps every TBT"
    if overloaded(turns):
        assert load > 1


def test_round_load_of_a_lone_batch_has_no_switch():
    assert round_load([TurnInput("a", 0.05, 0.3, 0.1)], 2.0) == pytest.approx(0.5)
    assert round_load([TurnInput("a", 0.05, 0.1, 0.1), TurnInput("b", 0.05, 0.1, 0.1)], 2.0) == pytest.approx(1.05)


def test_step_model_learns_a_wrong_prior():
    model = StepTimeModel(fixed_s=0.010, per_token_s=1e-6)
    for _ in range(30):
        model.observe(1000, 0.022)
    assert model.predict(1000) == pytest.approx(0.022, rel=0.02)
    assert model.observations == 30


def test_roofline_prior_and_switch_efficiency():
    step = roofline_step_model(weight_bytes=15_200_000_000, kv_bytes_per_token=131072, memory_bandwidth_bytes_s=3.35e12)
    assert step.predict(0) == pytest.approx(15.2e9 / 3.35e12)
    switch = SwitchTimeModel(bandwidth_bytes_s=50e9, fixed_s=0.002)
    for _ in range(40):
        switch.observe(15_200_000_000, 0.002 + 15.2e9 / 40e9)  # the link really gives 40 GB/s
    assert switch.efficiency == pytest.approx(0.8, rel=0.02)
    assert switch.predict(15_200_000_000) == pytest.approx(0.002 + 0.38, rel=0.02)
