"""Helpers for turn-scheduling tests: a policy with workers that report page sizes and weights,
and TurnReports built by hand."""

from __future__ import annotations

from services.router.config import PolicyConfig
from services.router.decisions import StartTurn
from services.router.policy import RouterPolicy
from shared.protocol import ModelResidency, TurnReport, WorkerState

from .builders import MODELS, request, tokens

GB = 1_000_000_000


def worker_state(worker_id="w1", seq=1, total=1000, block=16, turn_id=0, ts=None, weights=None, running=()):
    weights = weights or {m: GB for m in MODELS}
    models = tuple(ModelResidency(m, "host", block, weights[m]) for m in MODELS)
    ts = float(seq) if ts is None else ts
    return WorkerState(worker_id, True, MODELS, models, None, tuple(running), total, total, "cpu", seq, ts, turn_id)


def make_policy(**config) -> RouterPolicy:
    config.setdefault("max_running_per_worker", 64)
    return RouterPolicy(MODELS, PolicyConfig(**config), now=0.0, slos={m: (10.0, 0.1) for m in MODELS})


def turns(decisions) -> list:
    return [d.turn for d in decisions if isinstance(d, StartTurn)]


def report(
    turn, reason="done", worker_id="w1", prefilled=(), decode_steps=0, decode_s=0.0, switch_s=0.0, prefill_tokens=0,
    prefill_s=0.0, handed_off=(),
):
    return TurnReport(
        worker_id, turn.turn_id, turn.model, reason, switch_s, 1 if prefill_tokens else 0, prefill_tokens, prefill_s,
        decode_steps, decode_steps * len(turn.request_ids), decode_steps * 100, decode_s, tuple(prefilled), (),
        handed_off=tuple(handed_off),
    )


def first_tokens(policy, rids, now, worker_id="w1"):
    """Each request's first token arrives."""
    for rid in rids:
        policy.on_tokens(tokens(rid, 0, (7,), worker_id), now)


__all__ = ["GB", "make_policy", "report", "request", "tokens", "turns", "worker_state", "first_tokens"]


def end_turn(policy, turn, now, reason="quota", worker_id="w1", total=1000, **fields):
    """The worker is alive (a fresh report listing what it holds) and reports `turn` over;
    returns the next turns."""
    running = tuple(policy.schedule_of(worker_id).held)
    state = worker_state(worker_id, seq=int(now * 1e6), ts=now, turn_id=turn.turn_id, total=total, running=running)
    policy.on_worker_state(state, now)
    return turns(policy.on_turn_report(report(turn, reason, worker_id=worker_id, **fields), now))
