"""Per-worker turn metrics from TurnReports: switches, switch seconds, turn lengths, idle time."""

from __future__ import annotations

from shared.metrics import Registry
from shared.protocol import TurnReport

TURN_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 60.0)


class TurnMetrics:
    def __init__(self, registry: Registry):
        labels = ("worker", "model")
        self._turns = registry.counter("tp_worker_turns_total", "Turns a worker ran, by how they ended.", ("worker", "model", "reason"))
        self._switches = registry.counter("tp_worker_switches_total", "Turns whose model differs from the previous turn's.", labels)
        self._switch_s = registry.counter(
            "tp_worker_switch_seconds_total", "Seconds turns spent before their first step (model and KV in).", labels
        )
        self._previous: dict[str, str] = {}
        self._length = registry.histogram(
            "tp_worker_turn_seconds", "Compute seconds per turn (prefill + decode).", ("worker", "kind"), TURN_BUCKETS
        )
        self._idle = registry.counter("tp_worker_idle_seconds_total", "Seconds a worker waited with no turn.", ("worker",))
        self._tokens = registry.counter("tp_worker_turn_tokens_total", "Tokens produced by turns.", ("worker", "model", "phase"))
        self._prefilled = registry.counter(
            "tp_worker_prefill_tokens_total", "Prompt tokens computed by prefill steps (recompute included).", labels
        )
        self._handed_off = registry.counter(
            "tp_worker_handed_off_total", "Requests a prefill worker handed over with their KV.", labels
        )

    def record(self, r: TurnReport) -> None:
        worker, model = r.worker_id, r.model
        self._turns.inc(worker=worker, model=model, reason=r.reason)
        if self._previous.get(worker, model) != model:
            self._switches.inc(worker=worker, model=model)
        self._previous[worker] = model
        self._switch_s.inc(r.switch_s, worker=worker, model=model)
        kind = "prefill" if r.prefill_steps and not r.decode_steps else "decode"
        self._length.observe(r.prefill_s + r.decode_s, worker=worker, kind=kind)
        self._idle.inc(r.idle_s, worker=worker)
        self._tokens.inc(len(r.prefilled), worker=worker, model=model, phase="first")
        self._tokens.inc(r.decode_tokens, worker=worker, model=model, phase="decode")
        self._prefilled.inc(r.prefill_tokens, worker=worker, model=model)
        self._handed_off.inc(len(r.handed_off), worker=worker, model=model)
