"""Turn scheduling on one worker, driven by hand with a scripted clock (no bus, no engine)."""

import math
from dataclasses import replace

import pytest

from services.router.config import TimePriors
from services.router.decisions import Assign, Cancel
from services.router.slo.quota import TurnInput, decode_quotas

from .turn_builders import GB, end_turn, make_policy, report, request, tokens, turns, worker_state


def start(policy, rid, model, now, max_tokens=50):
    decisions = policy.submit(request(rid, model, max_tokens), now)
    assert any(isinstance(d, Assign) for d in decisions)
    return turns(decisions)


def serve(policy, turn, now, reason="quota", **fields):
    """The worker runs `turn`: each of its requests gets a token (the first one for newcomers),
    then the turn ends with `reason`; returns the turns the policy sends next."""
    schedule = policy.schedule_of("w1")
    first = []
    for rid in turn.request_ids:
        held = schedule.held.get(rid)
        if held is None:
            continue
        if not held.prefilled:
            first.append(rid)
        policy.on_tokens(tokens(rid, held.produced, (7,), "w1"), now)
    fields.setdefault("decode_steps", 3)
    fields.setdefault("decode_s", 0.06)
    return end_turn(policy, turn, now, reason, prefilled=tuple(first), **fields)


def settled(models=("a", "b"), per_model=1, total=1000, **config):
    """A policy whose worker holds `per_model` requests of each model, all past their first
    token; returns it, the next turn and the time."""
    p = make_policy(**config)
    p.on_worker_state(worker_state(total=total), 0.0)
    now, sent = 0.1, []
    for m in models:
        for i in range(per_model):
            sent += start(p, f"{m}{i}", m, now)
            now += 0.001
    turn = sent[-1]
    while not all(h.prefilled for h in p.schedule_of("w1").held.values()):
        now += 0.05
        [turn] = serve(p, turn, now, total=total)
    return p, turn, now


def test_a_request_on_an_idle_worker_gets_one_unbounded_turn_that_prefills_and_decodes():
    p = make_policy()
    p.on_worker_state(worker_state(), 0.0)
    [t1] = start(p, "r1", "a", 0.1)
    assert (t1.model, t1.request_ids, t1.until_prefilled, t1.quota_s) == ("a", ("r1",), False, math.inf)


def test_a_lone_model_never_switches():
    p = make_policy()
    p.on_worker_state(worker_state(), 0.0)
    sent = start(p, "r1", "a", 0.1)
    assert sent[0].admit_new and start(p, "r2", "a", 0.3) == []  # r2 joins the unbounded turn at the worker
    p.on_tokens(tokens("r2", 0, (7,), "w1"), 0.35)
    assert start(p, "r3", "a", 0.4) == []
    assert [t.model for t in sent] == ["a"]
    assert all(t.quota_s == math.inf and not t.park for t in sent)


def test_two_models_on_one_worker_alternate_with_bounded_turns():
    p, turn, now = settled(("a", "b"))
    models = []
    for _ in range(6):
        models.append(turn.model)
        assert math.isfinite(turn.quota_s) and turn.quota_s > 0
        now += turn.quota_s
        [turn] = serve(p, turn, now)
    assert models in (["a", "b"] * 3, ["b", "a"] * 3)


def test_every_active_model_gets_one_turn_each_round():
    p, turn, now = settled(("a", "b", "c"), per_model=2)
    seen = []
    for _ in range(9):
        seen.append(turn.model)
        now += turn.quota_s
        [turn] = serve(p, turn, now)
    for r in range(3):
        assert sorted(seen[3 * r : 3 * r + 3]) == ["a", "b", "c"]


def test_quotas_follow_the_formula_with_learned_step_and_switch_times():
    p, turn, now = settled(("a", "b"), max_quota_s=4.0)
    step = {"a": 0.02, "b": 0.05}
    for _ in range(12):  # the workers' reports teach the estimators
        now += turn.quota_s
        [turn] = serve(p, turn, now, decode_steps=10, decode_s=10 * step[turn.model], switch_s=0.3)
    estimates, schedule = p.schedule_of("w1").estimates, p.schedule_of("w1")
    # a round is planned when it starts: the next full round reflects the estimates
    quotas = {}
    for _ in range(4):
        quotas[turn.model] = turn.quota_s
        now += turn.quota_s
        [turn] = serve(p, turn, now, decode_steps=10, decode_s=10 * step[turn.model], switch_s=0.3)
    inputs = [
        TurnInput(m, estimates.decode_step_s(m, GB, schedule.held[f"{m}0"].context), estimates.switch_s(GB), 0.1)
        for m in ("a", "b")
    ]
    assert quotas == pytest.approx(decode_quotas(inputs, 4.0), rel=0.1)
    assert quotas["b"] > quotas["a"]  # fewer tokens per TBT period: the longer turn
    assert max(quotas.values()) <= 4.0 * 1.1


def test_a_batch_that_outgrows_the_kv_cache_is_split_and_parks_the_other_half():
    p, turn, now = settled(("a",), per_model=4, total=5)  # 5 pages of 16 tokens
    for _ in range(2):  # the rounds planned while requests were arriving
        now += turn.quota_s
        [turn] = serve(p, turn, now, total=5)
    batches = []
    for _ in range(4):
        batches.append(turn.request_ids)
        assert math.isfinite(turn.quota_s)
        now += turn.quota_s
        [turn] = serve(p, turn, now, total=5)
        assert turn.park and set(turn.park) <= set(batches[-1])  # the batch that ran leaves room
    assert batches[0] == batches[2] and batches[1] == batches[3]
    assert sorted(batches[0] + batches[1]) == ["a0", "a1", "a2", "a3"]
    # 3 prompt + a few tokens + a page of growth = 2 pages each: two requests per batch
    assert len(batches[0]) == 2


def test_preempted_requests_resume_with_their_tokens_intact():
    p, turn, now = settled(("a", "b"))
    produced = p.schedule_of("w1").held["a0"].produced
    a_turns = 0
    for _ in range(4):
        a_turns += turn.model == "a"
        now += turn.quota_s
        [turn] = serve(p, turn, now)  # a quota ends each turn mid-request
    held = p.schedule_of("w1").held["a0"]
    assert held.produced == produced + a_turns and held.prefilled


def test_a_newcomer_joins_its_models_next_turn_without_an_extra_switch():
    p, turn, now = settled(("a", "b"))
    running = turn.model
    other = "b" if running == "a" else "a"
    assert start(p, f"{other}-new", other, now) == []  # 10 s of TTFT: no need to interrupt
    now += turn.quota_s
    [turn] = serve(p, turn, now)
    assert turn.model == other and f"{other}-new" in turn.request_ids and not turn.until_prefilled


def test_a_newcomer_of_the_running_model_joins_the_running_turn():
    p, turn, now = settled(("a", "b"))
    [extended] = start(p, f"{turn.model}-new", turn.model, now + 0.01)
    assert extended.model == turn.model
    assert set(turn.request_ids) < set(extended.request_ids) and extended.quota_s <= turn.quota_s + 0.1


def test_a_newcomer_whose_ttft_cannot_wait_for_its_turn_brings_its_models_turn_forward():
    p, turn, now = settled(("a", "b"), max_quota_s=4.0)
    other = "b" if turn.model == "a" else "a"
    p._slos[other] = (0.05, 0.1)  # must start within 50 ms
    [urgent] = start(p, "hurry", other, now + 0.001)
    # one switch, not two: the newcomer prefills and its model's batch decodes in the same turn
    assert (urgent.model, urgent.request_ids, urgent.until_prefilled) == (other, ("hurry", f"{other}0"), False)
    assert 0 < urgent.quota_s <= 4.0
    # that was the model's turn of the round: the next turn goes to the model that waited
    [following] = serve(p, urgent, now + 0.001 + urgent.quota_s)
    assert following.model == turn.model


def test_an_arrival_for_another_model_replaces_an_unbounded_turn():
    p = make_policy()
    p.on_worker_state(worker_state(), 0.0)
    [t1] = start(p, "a1", "a", 0.1)
    assert t1.quota_s == math.inf
    [t2] = start(p, "b1", "b", 0.3)
    assert t2.model == "b" and "b1" in t2.request_ids and math.isfinite(t2.quota_s)
    # the worker reports the replaced turn first: nothing new is sent for it
    assert turns(p.on_turn_report(report(t1, "replaced", decode_steps=4, decode_s=0.1), 0.31)) == []
    [t3] = serve(p, t2, 0.5)
    assert t3.model == "a" and math.isfinite(t3.quota_s)


def test_request_level_runs_one_model_until_its_requests_finish():
    p = make_policy(scheduling="request")
    p.on_worker_state(worker_state(), 0.0)
    [t1] = start(p, "a1", "a", 0.1)
    assert (t1.model, t1.request_ids, t1.until_prefilled, t1.quota_s) == ("a", ("a1",), False, math.inf)
    assert start(p, "b1", "b", 0.2) == []  # b waits for a's requests
    assert t1.admit_new and start(p, "a2", "a", 0.3) == []  # a's newcomer joins the running turn at the worker
    p.on_tokens(tokens("a1", 0, (1,), "w1", finish="stop"), 0.4)
    p.on_tokens(tokens("a2", 0, (1,), "w1", finish="stop"), 0.4)
    [t3] = turns(p.on_turn_report(report(t1, "done"), 0.41))
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
    assert p.holder("r1") == "w1" and not t1.until_prefilled


def test_kv_handoff_moves_a_prefilled_request_with_its_kv_entry_instead_of_recomputing():
    p = make_policy(prefill_workers=1, kv_handoff=True)
    p.on_worker_state(worker_state("w0"), 0.0)
    p.on_worker_state(worker_state("w1"), 0.0)
    [t1] = turns(p.submit(request("r1", "a"), 0.1))
    assert t1.until_prefilled and t1.hand_off
    assert p.on_tokens(tokens("r1", 0, (7,), "w0"), 0.2) == []  # the worker hands it over after its turn
    moved = p.on_turn_report(report(t1, "prefilled", "w0", prefilled=("r1",), handed_off=("r1",)), 0.21)
    [assign] = [d for d in moved if isinstance(d, Assign)]
    assert (assign.worker_id, assign.resume_token_ids, assign.kv_handoff) == ("w1", (7,), "r1")
    assert not any(isinstance(d, Cancel) for d in moved)  # the prefill worker already let it go
    [t2] = turns(moved)
    assert (t2.request_ids, t2.until_prefilled, t2.hand_off) == (("r1",), False, False)
    assert p.schedule_of("w1").held["r1"].prefilled  # its KV arrives with it: it decodes at once


def test_a_handed_off_request_missing_from_the_prefill_workers_reports_is_not_lost_before_its_turn_report():
    p = make_policy(prefill_workers=1, kv_handoff=True)
    p.on_worker_state(worker_state("w0"), 0.0)
    p.on_worker_state(worker_state("w1"), 0.0)
    [t1] = turns(p.submit(request("r1", "a"), 0.1))
    # the worker let r1 go; its states (no r1) overtake the turn's report on the bus
    for i in range(6):
        decisions = p.on_worker_state(worker_state("w0", seq=2 + i, turn_id=t1.turn_id), 0.2 + i * 0.01)
        assert not any(isinstance(d, Assign) for d in decisions)  # not prefilled a second time
    moved = p.on_turn_report(report(t1, "prefilled", "w0", prefilled=("r1",), handed_off=("r1",)), 0.3)
    [assign] = [d for d in moved if isinstance(d, Assign)]
    assert (assign.worker_id, assign.kv_handoff) == ("w1", "r1")


def test_kv_handoff_falls_back_to_recompute_for_a_request_the_prefill_worker_kept():
    p = make_policy(prefill_workers=1, kv_handoff=True)
    p.on_worker_state(worker_state("w0"), 0.0)
    p.on_worker_state(worker_state("w1"), 0.0)
    [t1] = turns(p.submit(request("r1", "a"), 0.1))
    p.on_tokens(tokens("r1", 0, (7,), "w0"), 0.2)
    moved = p.on_turn_report(report(t1, "prefilled", "w0", prefilled=("r1",)), 0.21)
    assert Cancel("w0", "r1") in moved
    [assign] = [d for d in moved if isinstance(d, Assign)]
    assert (assign.worker_id, assign.resume_token_ids, assign.kv_handoff) == ("w1", (7,), "")


def second_ask_of_a_long_prompt(**config) -> list:
    """A 5,000-token prompt under slow prefill priors (2 ms a token: 10 s, the TTFT objective)
    brings its model's turn forward; it is answered; then the same prompt, a question longer,
    arrives while the other model's bounded turn runs. The turns that arrival starts."""
    p, turn, now = settled(("a", "b"), time_priors=TimePriors(prefill_s_per_token=2e-3), **config)
    other = "b" if turn.model == "a" else "a"
    prompt = tuple(range(1000, 6000))
    [urgent] = turns(p.submit(replace(request("first", other, 4), prompt_token_ids=prompt), now + 0.001))
    assert urgent.model == other and "first" in urgent.request_ids
    now += 0.002 + 10.0
    [following] = serve(p, urgent, now)
    p.on_tokens(tokens("first", 1, (7, 7, 7), "w1", finish="length"), now)
    return turns(p.submit(replace(request("again", other, 4), prompt_token_ids=prompt + (8, 9)), now + 0.01))


def test_a_prompt_the_worker_probably_holds_is_planned_as_the_rest_only():
    """The router plans a prefill of what the worker's prefix cache probably lacks: the second
    ask needs a few tokens computed, so the running turn is not cut short for it; planned as
    the whole prompt, it would be."""
    assert second_ask_of_a_long_prompt() == []
    assert second_ask_of_a_long_prompt(prefix_routing=False) != []
