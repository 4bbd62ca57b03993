"""Turn scheduling on one worker, driven by hand with a scripted clock (no bus, no engine)."""

import math

import pytest

from services.router.decisions import Assign, Cancel
from services.router.slo.quota import TurnInput, decode_quotas

from .turn_builders import GB, end_turn, first_tokens, make_policy, report, request, tokens, turns, worker_state


def start(policy, rid, model, now, max_tokens=50):
    decisions = policy.submit(request(rid, model, max_tokens), now)
    assert any(isinstance(d, Assign) for d in decisions)
    return turns(decisions)


def prefill(policy, turn, now):
    """The worker prefills a prefill turn's requests; returns the turns the policy sends next."""
    assert turn.until_prefilled
    first_tokens(policy, turn.request_ids, now)
    return turns(policy.on_turn_report(report(turn, "prefilled", prefilled=turn.request_ids, prefill_tokens=3), now))


def decoding_policy(models=("a", "b"), per_model=1, **config):
    """A policy with `per_model` requests of each model prefilled on w1; returns it and the next turn."""
    p = make_policy(**config)
    p.on_worker_state(worker_state(), 0.0)
    now, pending = 0.1, []
    for m in models:
        for i in range(per_model):
            pending += start(p, f"{m}{i}", m, now)
    [turn] = pending[:1]
    while turn.until_prefilled:
        now += 0.01
        [turn] = prefill(p, turn, now)
    return p, turn, now


def test_a_new_request_gets_a_prefill_turn_then_an_unbounded_decode_turn():
    p = make_policy()
    p.on_worker_state(worker_state(), 0.0)
    [t1] = start(p, "r1", "a", 0.1)
    assert (t1.model, t1.request_ids, t1.until_prefilled, t1.quota_s) == ("a", ("r1",), True, math.inf)
    [t2] = prefill(p, t1, 0.2)
    assert (t2.model, t2.request_ids, t2.until_prefilled, t2.quota_s) == ("a", ("r1",), False, math.inf)


def test_a_lone_model_never_switches():
    p = make_policy()
    p.on_worker_state(worker_state(), 0.0)
    sent = start(p, "r1", "a", 0.1)
    sent += prefill(p, sent[-1], 0.2)
    sent += start(p, "r2", "a", 0.3)  # replaces the unbounded decode turn with r2's prefill
    sent += prefill(p, sent[-1], 0.4)
    assert [t.model for t in sent] == ["a"] * 4
    assert sent[-1].request_ids == ("r1", "r2") and sent[-1].quota_s == math.inf and not sent[-1].park


def test_two_models_on_one_worker_alternate_with_bounded_turns():
    p, turn, now = decoding_policy(("a", "b"))
    models = []
    for _ in range(6):
        models.append(turn.model)
        assert math.isfinite(turn.quota_s) and turn.quota_s > 0
        now += turn.quota_s
        [turn] = end_turn(p, turn, now, "quota", decode_steps=5, decode_s=0.1)
    assert models in (["a", "b"] * 3, ["b", "a"] * 3)


def test_every_active_model_gets_one_turn_each_round():
    p, turn, now = decoding_policy(("a", "b", "c"), per_model=2)
    seen = []
    for _ in range(9):
        seen.append(turn.model)
        now += turn.quota_s
        [turn] = end_turn(p, turn, now, "quota", decode_steps=3, decode_s=0.05)
    for r in range(3):
        assert sorted(seen[3 * r : 3 * r + 3]) == ["a", "b", "c"]


def test_quotas_follow_the_formula_with_learned_step_and_switch_times():
    p, turn, now = decoding_policy(("a", "b"), max_quota_s=4.0)
    step = {"a": 0.02, "b": 0.05}
    for _ in range(12):  # the workers' reports teach the estimators
        now += turn.quota_s
        steps = 10
        [turn] = end_turn(p, turn, now, "quota", decode_steps=steps, decode_s=steps * step[turn.model], switch_s=0.3)
    estimates = p.schedule_of("w1").estimates
    schedule = p.schedule_of("w1")
    inputs = [
        TurnInput(m, estimates.decode_step_s(m, GB, schedule.held[f"{m}0"].context), estimates.switch_s(GB), 0.1)
        for m in ("a", "b")
    ]
    expected = decode_quotas(inputs, 4.0)
    # a round is planned when it starts: finish the current one so the next reflects the estimates
    quotas = {}
    for _ in range(4):
        quotas[turn.model] = turn.quota_s
        now += turn.quota_s
        [turn] = end_turn(p, turn, now, "quota", decode_steps=10, decode_s=10 * step[turn.model], switch_s=0.3)
    assert estimates.decode_step_s("b", GB, 100) > estimates.decode_step_s("a", GB, 100)
    assert quotas == pytest.approx(expected, rel=0.05)
    assert quotas["b"] > quotas["a"]  # fewer tokens per TBT period: the longer turn
    assert max(quotas.values()) <= 4.0 + 1e-9


def test_a_batch_that_outgrows_the_kv_cache_is_split_and_parks_the_other_half():
    p = make_policy()
    p.on_worker_state(worker_state(total=5, block=16), 0.0)  # 5 pages of 16 tokens
    sent = []
    for i in range(4):
        sent += start(p, f"r{i}", "a", 0.1 + i * 0.001)
    turn = sent[0]
    now = 0.2
    while turn.until_prefilled:
        [turn] = prefill(p, turn, now)
        now += 0.01
    batches = []
    for _ in range(4):
        batches.append(turn.request_ids)
        assert math.isfinite(turn.quota_s)
        now += turn.quota_s
        [turn] = end_turn(p, turn, now, "quota", total=5, decode_steps=2, decode_s=0.01)
        assert turn.park and set(turn.park) <= set(batches[-1])  # the batch that ran leaves room
    assert batches[0] == batches[2] and batches[1] == batches[3]
    assert sorted(batches[0] + batches[1]) == ["r0", "r1", "r2", "r3"]
    # 3 prompt + 1 token + a page of growth = 2 pages each: two requests per batch
    assert len(batches[0]) == 2


def test_preempted_requests_resume_with_their_tokens_intact():
    p, turn, now = decoding_policy(("a", "b"))
    a_turn = turn if turn.model == "a" else None
    for _ in range(3):
        if turn.model == "a":
            a_turn = turn
            for index in range(1, 4):  # three more tokens of a0 during its turn
                p.on_tokens(tokens("a0", index, (index,), "w1"), now)
        now += turn.quota_s
        [turn] = end_turn(p, turn, now, "quota", decode_steps=3, decode_s=0.06)
    held = p.schedule_of("w1").held["a0"]
    assert held.produced == 4 and held.prefilled
    assert "a0" in (turn.request_ids if turn.model == "a" else a_turn.request_ids)


def test_grouped_prefill_and_the_warm_group_goes_first_when_no_ttft_suffers():
    p = make_policy()
    p.on_worker_state(worker_state(), 0.0)
    [t1] = start(p, "a1", "a", 0.1)
    assert start(p, "b1", "b", 0.11) == []  # a prefill turn is never interrupted
    assert start(p, "a2", "a", 0.12) == []
    assert start(p, "a3", "a", 0.13) == []
    [t2] = prefill(p, t1, 0.2)
    assert (t2.model, t2.request_ids, t2.until_prefilled) == ("a", ("a2", "a3"), True)  # a is warm, b has 10 s
    assert t2.prefetch == "b"
    [t3] = prefill(p, t2, 0.3)
    assert (t3.model, t3.request_ids) == ("b", ("b1",))


def test_the_head_group_goes_first_when_jumping_would_break_its_ttft():
    p = make_policy()
    p.on_worker_state(worker_state(), 0.0)
    p._slos["b"] = (0.05, 0.1)  # b must start within 50 ms
    [t1] = start(p, "a1", "a", 0.1)
    start(p, "b1", "b", 0.11)
    start(p, "a2", "a", 0.12)
    [t2] = prefill(p, t1, 0.14)
    assert (t2.model, t2.request_ids) == ("b", ("b1",))


def test_an_arrival_for_another_model_replaces_an_unbounded_decode_turn():
    p = make_policy()
    p.on_worker_state(worker_state(), 0.0)
    [t1] = start(p, "a1", "a", 0.1)
    [t2] = prefill(p, t1, 0.2)
    assert t2.quota_s == math.inf
    [t3] = start(p, "b1", "b", 0.3)
    assert (t3.model, t3.until_prefilled) == ("b", True)
    # the worker reports the replaced turn first: nothing new is sent for it
    assert turns(p.on_turn_report(report(t2, "replaced", decode_steps=4, decode_s=0.1), 0.31)) == []
    [t4] = prefill(p, t3, 0.4)
    assert t4.model in ("a", "b") and math.isfinite(t4.quota_s)


def test_request_level_runs_one_model_until_its_requests_finish():
    p = make_policy(scheduling="request")
    p.on_worker_state(worker_state(), 0.0)
    [t1] = start(p, "a1", "a", 0.1)
    assert (t1.model, t1.request_ids, t1.until_prefilled, t1.quota_s) == ("a", ("a1",), False, math.inf)
    assert start(p, "b1", "b", 0.2) == []  # b waits for a's requests
    [t2] = start(p, "a2", "a", 0.3)  # a's newcomer joins the running model
    assert (t2.model, t2.request_ids) == ("a", ("a1", "a2"))
    p.on_tokens(tokens("a1", 0, (1,), "w1", finish="stop"), 0.4)
    p.on_tokens(tokens("a2", 0, (1,), "w1", finish="stop"), 0.4)
    [t3] = turns(p.on_turn_report(report(t2, "done"), 0.41))
    assert (t3.model, t3.request_ids) == ("b", ("b1",))


def test_a_lost_turn_is_planned_again():
    p = make_policy()
    p.on_worker_state(worker_state(), 0.0)
    [t1] = start(p, "r1", "a", 0.1)
    assert turns(p.on_worker_state(worker_state(seq=2, turn_id=0), 1.0)) == []  # may still be on its way
    [again] = turns(p.on_worker_state(worker_state(seq=3, turn_id=0), 2.0))
    assert again.request_ids == ("r1",) and again.turn_id != t1.turn_id


def test_a_dead_worker_takes_its_schedule_with_it():
    p = make_policy(worker_timeout_s=1.0)
    p.on_worker_state(worker_state("w1"), 0.0)
    start(p, "r1", "a", 0.1)
    p.on_worker_state(worker_state("w2"), 1.5)
    [turn] = turns(p.tick(1.6))
    assert turn.request_ids == ("r1",) and p.schedule_of("w1") is None
    assert p.holder("r1") == "w2"


def test_disaggregated_mode_prefills_on_one_worker_and_decodes_on_another():
    p = make_policy(prefill_workers=1)
    p.on_worker_state(worker_state("w0"), 0.0)
    p.on_worker_state(worker_state("w1"), 0.0)
    decisions = p.submit(request("r1", "a"), 0.1)
    assert [d.worker_id for d in decisions if isinstance(d, Assign)] == ["w0"]
    [t1] = turns(decisions)
    assert t1.until_prefilled
    moved = p.on_tokens(tokens("r1", 0, (7,), "w0"), 0.2)
    assert Cancel("w0", "r1") in moved
    [assign] = [d for d in moved if isinstance(d, Assign)]
    assert (assign.worker_id, assign.resume_token_ids) == ("w1", (7,))  # recompute from prompt + token
    [t2] = turns(moved)
    assert (t2.model, t2.request_ids) == ("a", ("r1",)) and p.holder("r1") == "w1"


def test_disaggregated_mode_with_one_live_worker_does_both_there():
    p = make_policy(prefill_workers=1)
    p.on_worker_state(worker_state("w1"), 0.0)
    [t1] = start(p, "r1", "a", 0.1)
    [t2] = prefill(p, t1, 0.2)
    assert p.holder("r1") == "w1" and not t2.until_prefilled
