"""Per-request SLO attainment: token deadlines after Aegaeon (Xiang et al., SOSP 2025), and strict attainment.

Pure code: times in, numbers out. The router, the gateway, the simulator and the benchmarks
all measure requests with it, so their figures mean the same thing.

Token deadlines, with A the request's arrival, t_k the time token k (k = 0 the first) was
delivered, T the TTFT objective and B the TBT objective:

    d_0 = A + T
    d_k = t_j + (k - j) * B     j < k the latest late token (t_j > d_j), the re-anchoring
    d_k = A + T + k * B         when no token before k was late

which is the same as d_k = max(d_{k-1}, t_{k-1}) + B. A token is on time when t_k <= d_k.
Re-anchoring means one miss is paid once: after a stall the request is judged again from
the late token on, not held to deadlines that are already out of reach. Tokens that come
early do not move later deadlines earlier, so they bank slack that pays for a later pause
(the slack a token-level scheduler spends on switching models).

Attainment is the fraction of the request's service time, arrival to last token, during
which no token was overdue. Token k's interval runs from the previous token (token 0:
from the arrival) to t_k; every deadline falls after the start of its interval, so the
part past d_k is exactly t_k - d_k when the token is late, and

    attainment = 1 - sum_k max(0, t_k - d_k) / (t_last - A)

This counts only the overdue part of a late token's interval as late, rather than the
whole interval: counted whole, a first token that comes early within its TTFT would
lengthen the on-time share, so delaying every token could raise attainment. Counted this
way, delaying tokens never raises it and looser objectives never lower it.

Strict attainment judges the request as a whole: TTFT <= T and mean TBT <= B, the mean TBT
being (t_last - t_0) / (tokens - 1). A single-token request is judged on TTFT alone.

A request that ended before its first token (failed or cancelled) has attainment 0 and is
not strict: a scheduler must not look better by dropping requests. Callers that report
those failures elsewhere (the gateway counts errors) may leave them out instead.

Tokens delivered together (a chunk carrying several) share one time; times may repeat but
never decrease. A request with zero service time (every token at the arrival instant) has
attainment 1.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class RequestSlo:
    """How one request fared against its objectives."""

    tokens: int
    ttft_s: float | None
    """Arrival to first token; None when no token came."""
    tbts: tuple[float, ...]
    """Every gap between consecutive tokens (0 within a chunk), tokens - 1 of them."""
    mean_tbt_s: float | None
    """(t_last - t_0) / (tokens - 1); None with fewer than two tokens."""
    attainment: float
    """Fraction of the service time with no token overdue, in [0, 1]."""
    strict: bool
    """TTFT <= the TTFT objective and mean TBT <= the TBT objective."""
    tokens_on_time: int
    """Tokens delivered by their (re-anchored) deadline."""


def token_deadlines(
    arrival_s: float, token_times_s: Sequence[float], ttft_slo_s: float, tbt_slo_s: float
) -> tuple[float, ...]:
    """The deadline of each delivered token, plus that of the next one (len(token_times_s) + 1 values)."""
    times = tuple(float(t) for t in token_times_s)
    _check(arrival_s, times, ttft_slo_s, tbt_slo_s)
    return _deadlines(arrival_s, times, ttft_slo_s, tbt_slo_s)


def request_slo(
    arrival_s: float, token_times_s: Sequence[float], ttft_slo_s: float, tbt_slo_s: float
) -> RequestSlo:
    """Measures one request: token_times_s[k] is when token k was delivered (same clock as arrival_s)."""
    times = tuple(map(float, token_times_s))
    if not times:
        _check(arrival_s, times, ttft_slo_s, tbt_slo_s)
        return RequestSlo(0, None, (), None, 0.0, False, 0)
    # One pass over the tokens (the simulator measures millions): the deadlines of _deadlines,
    # the overdue time and the on-time count together; bad input goes to _check for its message.
    if not (ttft_slo_s > 0 and tbt_slo_s > 0 and math.isfinite(arrival_s)):
        _check(arrival_s, times, ttft_slo_s, tbt_slo_s)
    anchor_s, anchor_index = arrival_s + ttft_slo_s, 0
    late_s, on_time, previous = 0.0, 0, arrival_s
    for k, t in enumerate(times):
        if not previous <= t < math.inf:
            _check(arrival_s, times, ttft_slo_s, tbt_slo_s)
        due = anchor_s if k == anchor_index else anchor_s + (k - anchor_index) * tbt_slo_s
        if t > due:  # late: the deadlines re-anchor at this token
            late_s += t - due
            anchor_s, anchor_index = t, k
        else:
            on_time += 1
        previous = t
    service_s = times[-1] - arrival_s
    attainment = 1.0 if service_s == 0 else min(1.0, max(0.0, 1.0 - late_s / service_s))
    ttft = times[0] - arrival_s
    tbts = tuple(b - a for a, b in zip(times, times[1:]))
    mean_tbt = (times[-1] - times[0]) / len(tbts) if tbts else None
    strict = ttft <= ttft_slo_s and (mean_tbt is None or mean_tbt <= tbt_slo_s)
    return RequestSlo(len(times), ttft, tbts, mean_tbt, attainment, strict, on_time)


@dataclass(frozen=True)
class SloSummary:
    """Many requests at a glance, as the simulator and the benchmarks print them."""

    requests: int
    mean_attainment: float | None
    """Mean of the per-request attainments (requests without a token count as 0)."""
    strict_fraction: float | None
    """Fraction of requests that met both objectives."""
    ttft_p50_s: float | None
    ttft_p99_s: float | None
    """TTFT percentiles over the requests that produced a token."""
    tbt_p50_s: float | None
    tbt_p99_s: float | None
    """TBT percentiles over every gap of every request."""

    def line(self) -> str:
        """One line: `requests 40  attainment 97.5%  strict 90.0%  TTFT p50 0.41 s p99 2.3 s  TBT p50 ...`."""
        return (
            f"requests {self.requests}  attainment {_percent(self.mean_attainment)}  "
            f"strict {_percent(self.strict_fraction)}  "
            f"TTFT p50 {_seconds(self.ttft_p50_s)} p99 {_seconds(self.ttft_p99_s)}  "
            f"TBT p50 {_seconds(self.tbt_p50_s)} p99 {_seconds(self.tbt_p99_s)}"
        )


def summarize(results: Iterable[RequestSlo]) -> SloSummary:
    results = list(results)
    if not results:
        return SloSummary(0, None, None, None, None, None, None)
    ttfts = sorted(r.ttft_s for r in results if r.ttft_s is not None)
    tbts = sorted(gap for r in results for gap in r.tbts)
    return SloSummary(
        requests=len(results),
        mean_attainment=sum(r.attainment for r in results) / len(results),
        strict_fraction=sum(r.strict for r in results) / len(results),
        ttft_p50_s=percentile(ttfts, 50),
        ttft_p99_s=percentile(ttfts, 99),
        tbt_p50_s=percentile(tbts, 50),
        tbt_p99_s=percentile(tbts, 99),
    )


def percentile(sorted_values: Sequence[float], p: float) -> float | None:
    """The p-th percentile (0..100) of ascending values, interpolating between ranks; None when empty."""
    if not 0 <= p <= 100:
        raise ValueError(f"percentile must be within [0, 100], got {p}")
    if not sorted_values:
        return None
    rank = (len(sorted_values) - 1) * p / 100
    low = math.floor(rank)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (rank - low)


def _deadlines(arrival_s: float, times: tuple[float, ...], ttft_slo_s: float, tbt_slo_s: float) -> tuple[float, ...]:
    # Token `anchor_index` is due at anchor_s and each later one a TBT after it. Computing each
    # deadline from its anchor rather than by repeated addition keeps a token that comes exactly
    # on its deadline on time despite rounding.
    anchor_s, anchor_index = arrival_s + ttft_slo_s, 0

    def due(k: int) -> float:
        return anchor_s if k == anchor_index else anchor_s + (k - anchor_index) * tbt_slo_s

    deadlines = []
    for k, t in enumerate(times):
        deadlines.append(due(k))
        if t > deadlines[-1]:  # late: the deadlines re-anchor at this token
            anchor_s, anchor_index = t, k
    deadlines.append(due(len(times)))
    return tuple(deadlines)


def _check(arrival_s: float, times: Sequence[float], ttft_slo_s: float, tbt_slo_s: float) -> None:
    for name, value in (("ttft_slo_s", ttft_slo_s), ("tbt_slo_s", tbt_slo_s)):
        if not value > 0:  # also catches NaN
            raise ValueError(f"{name} must be a positive number of seconds, got {value}")
    if not math.isfinite(arrival_s):
        raise ValueError(f"arrival_s must be a finite time, got {arrival_s}")
    previous, what = arrival_s, "the arrival"
    for k, t in enumerate(times):
        if not math.isfinite(t):
            raise ValueError(f"token {k} has no finite time ({t})")
        if t < previous:
            raise ValueError(
                f"token {k} at {t} s comes before {what} at {previous} s: token times must not decrease "
                "and not precede the arrival (tokens of one chunk share a time)"
            )
        previous, what = t, f"token {k}"


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _seconds(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3g} s"
