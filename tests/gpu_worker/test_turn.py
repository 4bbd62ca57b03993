"""A turn's bookkeeping on its own: when it ends and what its report counts, with a scripted clock."""

import math

from services.gpu_worker.engine.engine import StepInfo
from services.gpu_worker.turn import RunningTurn
from shared.protocol import RunTurn

PREFILL = StepInfo(is_prefill=True, num_seqs=2, num_tokens=11, context_tokens=11)
DECODE = StepInfo(is_prefill=False, num_seqs=2, num_tokens=2, context_tokens=13)


def turn(request_ids=("a", "b"), quota_s=math.inf, until_prefilled=False, idle_s=0.0) -> RunningTurn:
    msg = RunTurn(7, "m", ("a", "b", "c"), quota_s, until_prefilled)
    return RunningTurn.start(msg, request_ids, idle_s)


def test_a_turn_runs_until_its_requests_finish_and_counts_both_kinds_of_step():
    t = turn(idle_s=0.25)
    t.switch_s = 0.5
    t.stepped(PREFILL, started_at=10.0, seconds=0.2, produced=["a", "b"], first=["a", "b"])
    t.stepped(DECODE, started_at=10.2, seconds=0.1, produced=["a", "b"], finished=["a"])
    assert t.end_reason(now=10.3) is None
    t.stepped(StepInfo(False, 1, 1, 7), started_at=10.3, seconds=0.05, produced=["b"], finished=["b"])
    assert t.end_reason(now=10.35) == "done"

    report = t.report("w1", "done", ts=123.0)
    assert (report.worker_id, report.turn_id, report.model, report.reason) == ("w1", 7, "m", "done")
    assert (report.prefill_steps, report.prefill_tokens, report.prefill_s) == (1, 11, 0.2)
    assert (report.decode_steps, report.decode_tokens, report.decode_context_tokens) == (2, 3, 20)
    assert math.isclose(report.decode_s, 0.15)
    assert report.prefilled == ("a", "b") and report.finished == ("a", "b")
    assert (report.switch_s, report.idle_s, report.ts) == (0.5, 0.25, 123.0)


def test_the_quota_counts_from_the_first_step_and_only_ends_a_turn_between_steps():
    t = turn(quota_s=0.3)
    assert t.end_reason(now=1000.0) is None  # no step yet: a switch does not eat the quota
    t.stepped(DECODE, started_at=5.0, seconds=0.2, produced=["a", "b"])
    assert t.end_reason(now=5.2) is None
    t.stepped(DECODE, started_at=5.2, seconds=0.2, produced=["a", "b"])
    assert t.end_reason(now=5.4) == "quota"


def test_a_zero_quota_is_one_step_and_a_nan_quota_is_taken_as_zero():
    for quota in (0.0, math.nan):
        t = turn(quota_s=quota)
        assert t.end_reason(now=0.0) is None
        t.stepped(DECODE, started_at=0.0, seconds=0.01, produced=["a", "b"])
        assert t.end_reason(now=0.01) == "quota"


def test_a_prefill_turn_ends_once_every_open_request_has_a_token():
    t = turn(until_prefilled=True)
    t.stepped(StepInfo(True, 1, 6, 6), started_at=0.0, seconds=0.1, produced=["a"], first=["a"])
    assert t.end_reason(now=0.1) is None
    t.stepped(StepInfo(True, 1, 5, 5), started_at=0.1, seconds=0.1, produced=["b"], first=["b"])
    assert t.end_reason(now=0.2) == "prefilled"
    assert t.report("w", "prefilled", 0.0).prefilled == ("a", "b")


def test_a_chunk_of_a_prompt_counts_as_prefill_without_a_token():
    t = turn(request_ids=("a",), until_prefilled=True)
    t.stepped(StepInfo(True, 1, 2048, 2048), started_at=0.0, seconds=1.0)
    assert t.end_reason(now=1.0) is None and t.prefill_tokens == 2048 and not t.prefilled


def test_finished_beats_prefilled_and_a_request_that_leaves_is_not_waited_for():
    t = turn(until_prefilled=True)
    t.stepped(PREFILL, started_at=0.0, seconds=0.1, produced=["a", "b"], first=["a", "b"], finished=["a", "b"])
    assert t.end_reason(now=0.1) == "done"

    t = turn(until_prefilled=True)
    t.stepped(StepInfo(True, 1, 6, 6), started_at=0.0, seconds=0.1, produced=["a"], first=["a"])
    t.drop("b")  # cancelled before its first token
    assert t.end_reason(now=0.1) == "prefilled"
    t.drop("a")
    assert t.end_reason(now=0.1) == "done"


def test_a_resumed_request_is_not_prefilled_twice():
    t = turn(request_ids=("a",))
    t.stepped(DECODE, started_at=0.0, seconds=0.1, produced=["a"], first=[])
    assert t.report("w", "quota", 0.0).prefilled == ()


def test_nothing_to_run_is_idle():
    assert turn(request_ids=()).end_reason(now=0.0) == "idle"
    t = turn()
    t.stepped(None, started_at=0.0, seconds=0.0)  # no KV page for any of them
    assert t.end_reason(now=0.0) == "idle"
    assert t.report("w", "idle", 0.0).prefill_steps == t.report("w", "idle", 0.0).decode_steps == 0


def test_a_hand_off_turn_lets_each_request_go_after_its_first_token_of_the_turn_unless_it_finished():
    t = RunningTurn.start(RunTurn(8, "m", ("a", "b", "c"), math.inf, True, hand_off=True), ("a", "b", "c"))
    assert turn().due_for_hand_off(["a", "b"], []) == []  # not a hand-off turn
    leaving = t.due_for_hand_off(["a", "b"], finished=["b"])
    assert leaving == ["a"]
    t.stepped(PREFILL, started_at=1.0, seconds=0.1, produced=["a", "b"], first=["a", "b"], finished=["b"])
    for request_id in leaving:
        t.handed_off_one(request_id)
    assert t.end_reason(now=1.1) is None  # c has not had its token yet
    assert t.due_for_hand_off(["c"], []) == ["c"]
    t.stepped(DECODE, started_at=1.1, seconds=0.1, produced=["c"], first=["c"])
    assert t.due_for_hand_off(["c"], []) == []  # checked after the step: it already had its token
    t.handed_off_one("c")
    assert t.end_reason(now=1.2) == "done"

    report = t.report("w", "done", ts=2.0)
    assert report.prefilled == ("a", "b", "c") and report.finished == ("b",) and report.handed_off == ("a", "c")


def test_an_admitting_turn_takes_in_requests_of_its_model_assigned_while_it_runs():
    msg = RunTurn(8, "m", ("a",), math.inf, admit_new=True)
    t = RunningTurn.start(msg, ("a",))
    t.stepped(DECODE, started_at=1.0, seconds=0.1, produced=["a"], finished=["a"])
    assert not t.admit("x", "other-model")  # another model's request waits for its own turn
    assert t.admit("b", "m") and not t.admit("b", "m")
    assert t.end_reason(now=1.2) is None  # b keeps the turn going
    t.stepped(PREFILL, started_at=1.2, seconds=0.1, produced=["b"], first=["b"], finished=["b"])
    assert t.end_reason(now=1.3) == "done" and t.report("w1", "done", 1.3).prefilled == ("b",)
    closed = RunningTurn.start(RunTurn(9, "m", ("a",), math.inf), ("a",))
    assert not closed.admit("b", "m")  # a turn that does not admit newcomers lists its requests


def test_an_admitting_turn_with_nothing_left_lingers_for_a_newcomer_then_ends_done():
    msg = RunTurn(8, "m", ("a",), math.inf, admit_new=True)
    t = RunningTurn.start(msg, ("a",), linger_s=0.005)
    t.stepped(DECODE, started_at=1.0, seconds=0.1, produced=["a"], finished=["a"])
    assert t.end_reason(now=1.1) is None and math.isclose(t.linger_left(1.1), 0.005)  # lingering starts
    assert t.end_reason(now=1.103) is None and math.isclose(t.linger_left(1.103), 0.002)
    assert t.admit("b", "m") and t.linger_left(1.104) == 0.0  # a newcomer: back to work
    t.stepped(PREFILL, started_at=1.104, seconds=0.1, produced=["b"], first=["b"], finished=["b"])
    assert t.end_reason(now=1.204) is None  # the linger starts again from here
    assert t.end_reason(now=1.2095) == "done"
    closed = RunningTurn.start(RunTurn(9, "m", ("a",), math.inf), ("a",), linger_s=0.005)
    closed.stepped(DECODE, started_at=1.0, seconds=0.1, produced=["a"], finished=["a"])
    assert closed.end_reason(now=1.1) == "done"  # a turn that admits no newcomer has none to wait for
    bounded = RunningTurn.start(RunTurn(10, "m", ("a",), 0.5, admit_new=True), ("a",), linger_s=0.005)
    assert bounded.linger_left(1.0) == 0.0  # open requests: not lingering
