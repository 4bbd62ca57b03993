"""Which model computes next: round robin over models with work, min_turn_steps per turn."""

import pytest

from services.gpu_worker.multiplexer import Decision, Turn, advance, decide, should_swap_out

A, B, C = "a-model", "b-model", "c-model"


@pytest.mark.parametrize(
    "with_work, turn, min_steps, expected",
    [
        ([], Turn(None), 4, Decision(None, False, None)),
        ([], Turn(A, 2), 4, Decision(None, False, None)),
        ([A], Turn(None), 4, Decision(A, True, None)),
        # the only model with work keeps the engine however long its turn was
        ([A], Turn(A, 99), 4, Decision(A, False, None)),
        # a turn lasts min_turn_steps while others wait
        ([A, B], Turn(A, 1), 4, Decision(A, False, B)),
        ([A, B], Turn(A, 3), 4, Decision(A, False, B)),
        ([A, B], Turn(A, 4), 4, Decision(B, True, A)),
        # name order, wrapping around, whatever order the engine lists them in
        ([C, A, B], Turn(B, 4), 4, Decision(C, True, A)),
        ([C, A, B], Turn(C, 4), 4, Decision(A, True, B)),
        # a model that ran out of work hands over to the next one after it
        ([A, C], Turn(B, 1), 4, Decision(C, True, A)),
        ([A], Turn(C, 1), 4, Decision(A, True, None)),
        # min_turn_steps 1 is the finest interleaving: a switch on every step
        ([A, B], Turn(A, 1), 1, Decision(B, True, A)),
        ([A, A, B], Turn(None), 2, Decision(A, True, B)),
    ],
)
def test_decide(with_work, turn, min_steps, expected):
    assert decide(with_work, turn, min_steps) == expected


@pytest.mark.parametrize(
    "turn, decision, expected",
    [
        (Turn(None), Decision(A, True, None), Turn(A, 1)),
        (Turn(A, 3), Decision(A, False, B), Turn(A, 4)),
        (Turn(A, 4), Decision(B, True, A), Turn(B, 1)),
        (Turn(A, 4), Decision(None, False, None), Turn(A, 4)),
    ],
)
def test_advance(turn, decision, expected):
    assert advance(turn, decision) == expected


def test_three_busy_models_take_turns_of_min_steps_each():
    turn, order = Turn(None), []
    for _ in range(18):
        decision = decide([A, B, C], turn, 3)
        order.append(decision.model)
        turn = advance(turn, decision)
    assert order == [A] * 3 + [B] * 3 + [C] * 3 + [A] * 3 + [B] * 3 + [C] * 3


@pytest.mark.parametrize(
    "previous_kv_pages, free_pages, pages_wanted, expected",
    [
        (10, 100, 5, False),  # room enough: keep the KV on the device, switching back is free
        (10, 5, 5, False),
        (10, 5, 6, True),  # the next model needs the previous model's pages
        (0, 0, 6, False),  # nothing to park
    ],
)
def test_should_swap_out(previous_kv_pages, free_pages, pages_wanted, expected):
    assert should_swap_out(previous_kv_pages, free_pages, pages_wanted) is expected
