"""What the worker's turns looked like during a `tokenpool bench sched` load.

    async with TurnWatch(nats_url, "bench-worker") as watch:
        ...  # the load
    figures = summarize_turns(watch.turns, watch.reports)

`TurnWatch` listens on the bus beside the router: the RunTurns it sends to the worker (quota,
requests, prefill or decode, requests parked) and the TurnReports the worker sends back (how
long it computed, how the turn ended). `summarize_turns` (pure) reduces them to what explains
the SLO figures: how long turns ran by kind, the longest turns, and how often the model on the
worker really changed (the router's `tp_worker_switches_total` counts every turn that spent
any time activating, which on a CPU worker with every model resident is every turn).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence

from services.router.slo.attainment import percentile
from shared import bus, protocol, subjects
from shared.protocol import RunTurn, TurnReport

LONGEST = 5
"""Turns listed in `longest_turns`."""


class TurnWatch:
    def __init__(self, nats_url: str, worker_id: str):
        self.nats_url = nats_url
        self.worker_id = worker_id
        self.turns: dict[int, RunTurn] = {}
        self.reports: list[TurnReport] = []
        self._nc = None

    async def __aenter__(self) -> TurnWatch:
        import nats

        self._nc = await nats.connect(self.nats_url, connect_timeout=5, max_reconnect_attempts=2)
        await self._nc.subscribe(subjects.TURN_REPORTS, cb=self._on_report)
        await self._nc.subscribe(subjects.worker_commands(self.worker_id), cb=self._on_command)
        await self._nc.flush()
        return self

    async def __aexit__(self, *exc) -> None:
        await bus.close(self._nc, "bench turn watcher")

    async def _on_report(self, msg) -> None:
        try:
            report = protocol.decode(msg.data, TurnReport)
        except protocol.ProtocolError:
            return
        if report.worker_id == self.worker_id:
            self.reports.append(report)

    async def _on_command(self, msg) -> None:
        try:
            command = protocol.decode(msg.data)
        except protocol.ProtocolError:
            return
        if isinstance(command, RunTurn):
            self.turns[command.turn_id] = command


def _kind(report: TurnReport, turn: RunTurn | None) -> str:
    if turn is not None:
        return "prefill" if turn.until_prefilled else "decode"
    return "prefill" if report.prefill_steps and not report.decode_steps else "decode"


def _seconds(values: Sequence[float]) -> dict:
    ordered = sorted(values)
    return {
        "turns": len(ordered),
        "p50_ms": _ms(percentile(ordered, 50)),
        "p99_ms": _ms(percentile(ordered, 99)),
        "max_ms": _ms(ordered[-1] if ordered else None),
        "total_s": round(sum(ordered), 3),
    }


def summarize_turns(turns: Mapping[int, RunTurn], reports: Sequence[TurnReport]) -> dict:
    """Turns in the order the worker reported them; a report without its RunTurn (sent before
    the watch began) is judged from its steps."""
    by_kind: dict[str, list[float]] = {"prefill": [], "decode": []}
    by_model: dict[str, dict[str, list[float]]] = {}
    reasons: Counter[str] = Counter()
    rows = []
    model_changes, previous, parked, over_quota = 0, None, 0, 0
    for r in reports:
        turn = turns.get(r.turn_id)
        kind = _kind(r, turn)
        compute = r.prefill_s + r.decode_s
        by_kind[kind].append(compute)
        by_model.setdefault(r.model, {"prefill": [], "decode": []})[kind].append(compute)
        reasons[r.reason] += 1
        if r.model != previous and (r.prefill_steps or r.decode_steps):
            model_changes += previous is not None
            previous = r.model
        if turn is not None:
            parked += len(turn.park)
            if kind == "decode" and math.isfinite(turn.quota_s) and compute > turn.quota_s:
                over_quota += 1
        rows.append((compute, r, turn, kind))
    rows.sort(key=lambda row: row[0], reverse=True)
    decode_quotas = sorted(t.quota_s for t in turns.values() if not t.until_prefilled and math.isfinite(t.quota_s))
    return {
        "turns": len(reports),
        "by_reason": dict(sorted(reasons.items())),
        "model_changes": model_changes,
        "requests_parked": parked,
        "prefill": _seconds(by_kind["prefill"]),
        "decode": _seconds(by_kind["decode"]),
        "decode_quota_ms": {
            "bounded_turns": len(decode_quotas),
            "p50": _ms(percentile(decode_quotas, 50)),
            "max": _ms(decode_quotas[-1] if decode_quotas else None),
            "turns_past_quota": over_quota,
        },
        "by_model": {
            model: {kind: _seconds(values) for kind, values in kinds.items()}
            for model, kinds in sorted(by_model.items())
        },
        "longest_turns": [_row(compute, r, turn, kind) for compute, r, turn, kind in rows[:LONGEST]],
    }


def _row(compute: float, r: TurnReport, turn: RunTurn | None, kind: str) -> dict:
    return {
        "model": r.model,
        "kind": kind,
        "compute_ms": _ms(compute),
        "requests": len(turn.request_ids) if turn is not None else None,
        "quota_ms": _ms(turn.quota_s) if turn is not None and math.isfinite(turn.quota_s) else None,
        "reason": r.reason,
        "prefill_tokens": r.prefill_tokens,
        "decode_steps": r.decode_steps,
        "switch_ms": _ms(r.switch_s),
    }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)
