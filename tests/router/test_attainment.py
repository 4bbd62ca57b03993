"""Per-request SLO attainment: hand-computed cases, bad input, and properties any scheduler comparison relies on."""

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.router.slo.attainment import percentile, request_slo, summarize, token_deadlines

# TTFT 1 s and TBT 0.25 s, with times in eighths of a second: the arithmetic is exact.
T, B = 1.0, 0.25


def test_every_token_on_time():
    r = request_slo(10.0, [10.5, 10.75, 11.0, 11.25], T, B)
    assert r.attainment == 1.0 and r.strict and r.tokens_on_time == r.tokens == 4
    assert (r.ttft_s, r.tbts, r.mean_tbt_s) == (0.5, (0.25, 0.25, 0.25), 0.25)


def test_a_ttft_miss_is_paid_once_then_deadlines_re_anchor():
    times = [2.0, 2.25, 2.5, 2.75]  # token 0 is 1 s late, the rest follow it at the TBT
    assert token_deadlines(0.0, times, T, B) == (1.0, 2.25, 2.5, 2.75, 3.0)  # without re-anchoring: 1.25, 1.5, ...
    r = request_slo(0.0, times, T, B)
    assert r.tokens_on_time == 3
    assert r.attainment == pytest.approx(1 - 1.0 / 2.75)  # 1 s overdue out of 2.75 s of service
    assert not r.strict  # TTFT 2 s > 1 s


def test_a_stall_in_the_middle():
    times = [0.5, 0.75, 1.0, 3.0, 3.25, 3.5]  # token 3 was due at 1 + 3 * 0.25 = 1.75 and came at 3.0
    assert token_deadlines(0.0, times, T, B)[3:] == (1.75, 3.25, 3.5, 3.75)
    r = request_slo(0.0, times, T, B)
    assert r.tokens_on_time == 5
    assert r.attainment == pytest.approx(1 - 1.25 / 3.5)
    assert r.mean_tbt_s == pytest.approx(0.6) and not r.strict


def test_early_tokens_bank_slack_for_a_later_pause():
    # Five tokens at once right away, then a pause: deadlines stay on the arrival's schedule.
    r = request_slo(0.0, [0.125] * 5 + [2.0], T, B)
    assert r.attainment == 1.0 and r.tokens_on_time == 6  # token 5 was due at 1 + 5 * 0.25 = 2.25


def test_strict_met_while_a_token_was_late():
    # Token 1 comes 0.25 s late, then a chunk brings three at once: the mean TBT stays within 0.25 s.
    r = request_slo(0.0, [1.0, 1.5, 1.5, 1.5, 1.5], T, B)
    assert r.strict and r.mean_tbt_s == 0.125
    assert r.attainment == pytest.approx(1 - 0.25 / 1.5) and r.tokens_on_time == 4


def test_strict_missed_while_nearly_all_the_time_was_on_time():
    times = [1.125 + 0.25 * k for k in range(8)]  # TTFT 1/8 s over, then steady at the TBT
    r = request_slo(0.0, times, T, B)
    assert not r.strict
    assert r.attainment == pytest.approx(1 - 0.125 / 2.875) and r.attainment > 0.95


def test_a_late_token_counts_only_its_overdue_part():
    # Token 1 was due at 11 and came at 20: 9 of the 20 s were overdue, however early token 0 was.
    assert request_slo(0.0, [1.0, 20.0], 10.0, 1.0).attainment == pytest.approx(1 - 9 / 20)
    # Delaying both tokens by 5 s must not look better (counting whole intervals, 1/20 would become 6/25).
    assert request_slo(0.0, [6.0, 25.0], 10.0, 1.0).attainment == pytest.approx(1 - 14 / 25)


def test_single_token_requests_are_judged_on_ttft_alone():
    on_time = request_slo(0.0, [0.5], T, B)
    assert on_time.strict and on_time.attainment == 1.0 and on_time.mean_tbt_s is None and on_time.tbts == ()
    late = request_slo(0.0, [1.5], T, B)
    assert not late.strict and late.attainment == pytest.approx(1 - 0.5 / 1.5)


def test_a_request_without_a_token_is_a_full_miss():
    r = request_slo(0.0, [], T, B)
    assert (r.tokens, r.ttft_s, r.mean_tbt_s, r.attainment, r.strict, r.tokens_on_time) == (0, None, None, 0.0, False, 0)


def test_tokens_at_the_arrival_instant():
    r = request_slo(3.0, [3.0, 3.0], T, B)
    assert r.attainment == 1.0 and r.strict and r.tbts == (0.0,)


@pytest.mark.parametrize(
    "arrival, times, ttft, tbt, message",
    [
        (0.0, [1.0, 0.5], T, B, "token 1 at 0.5 s comes before token 0 at 1.0 s"),
        (2.0, [1.0], T, B, "token 0 at 1.0 s comes before the arrival at 2.0 s"),
        (0.0, [1.0, math.nan], T, B, "token 1 has no finite time"),
        (math.inf, [], T, B, "arrival_s must be a finite time"),
        (0.0, [1.0], 0.0, B, "ttft_slo_s must be a positive number of seconds, got 0.0"),
        (0.0, [1.0], T, -0.1, "tbt_slo_s must be a positive number of seconds, got -0.1"),
        (0.0, [1.0], T, math.nan, "tbt_slo_s must be a positive"),
    ],
)
def test_bad_input_is_named(arrival, times, ttft, tbt, message):
    with pytest.raises(ValueError, match=message):
        request_slo(arrival, times, ttft, tbt)


def test_summary_of_many_requests():
    results = [
        request_slo(0.0, [0.5, 0.75, 1.0], T, B),  # attainment 1, strict
        request_slo(0.0, [2.0, 2.25, 2.5, 2.75], T, B),  # 1 - 1/2.75, not strict
        request_slo(0.0, [], T, B),  # failed before a token: 0, not strict
    ]
    s = summarize(results)
    assert s.requests == 3
    assert s.mean_attainment == pytest.approx((1 + (1 - 1 / 2.75) + 0) / 3)
    assert s.strict_fraction == pytest.approx(1 / 3)
    assert (s.ttft_p50_s, s.ttft_p99_s) == pytest.approx((1.25, 1.985))  # TTFTs 0.5 and 2.0
    assert s.tbt_p50_s == 0.25 and s.tbt_p99_s == 0.25
    assert s.line() == "requests 3  attainment 54.5%  strict 33.3%  TTFT p50 1.25 s p99 1.98 s  TBT p50 0.25 s p99 0.25 s"
    assert summarize([]).line() == "requests 0  attainment n/a  strict n/a  TTFT p50 n/a p99 n/a  TBT p50 n/a p99 n/a"


def test_percentile_interpolates_between_ranks():
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([1.0, 2.0, 3.0, 4.0], 100) == 4.0 and percentile([7.0], 99) == 7.0
    with pytest.raises(ValueError, match="within"):
        percentile([1.0], 101)


slos = st.floats(0.01, 10.0)
gaps = st.lists(st.one_of(st.just(0.0), st.floats(0.0, 5.0)), min_size=1, max_size=30)


def times_of(arrival, gap_list):
    times, t = [], arrival
    for g in gap_list:
        t += g
        times.append(t)
    return times


@given(st.floats(0.0, 100.0), gaps, slos, slos)
def test_attainment_is_a_fraction(arrival, gap_list, ttft, tbt):
    r = request_slo(arrival, times_of(arrival, gap_list), ttft, tbt)
    assert 0.0 <= r.attainment <= 1.0 and 0 <= r.tokens_on_time <= r.tokens
    if r.tokens_on_time == r.tokens:
        assert r.attainment == 1.0


@given(gaps, slos, slos, st.floats(0.0, 20.0))
def test_delaying_every_token_never_raises_attainment(gap_list, ttft, tbt, delay):
    times = times_of(0.0, gap_list)
    before = request_slo(0.0, times, ttft, tbt)
    after = request_slo(0.0, [t + delay for t in times], ttft, tbt)
    assert after.attainment <= before.attainment + 1e-9
    assert after.tokens_on_time <= before.tokens_on_time


@given(gaps, slos, slos, st.floats(1.0, 10.0))
def test_a_looser_objective_never_lowers_attainment(gap_list, ttft, tbt, factor):
    times = times_of(0.0, gap_list)
    base = request_slo(0.0, times, ttft, tbt)
    assert request_slo(0.0, times, ttft, tbt * factor).attainment >= base.attainment - 1e-9
    assert request_slo(0.0, times, ttft * factor, tbt).attainment >= base.attainment - 1e-9
