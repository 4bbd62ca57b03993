"""One turn the router gave this worker: what it computed, and when it ends.

    turn = RunningTurn.start(msg, request_ids=("r1", "r2"), idle_s=0.4)
    turn.stepped(step, started_at=t0, seconds=0.02, produced=["r1", "r2"], first=["r1", "r2"], finished=[])
    turn.end_reason(now)          # None while it goes on: "idle", "done", "prefilled" or "quota"
    turn.due_for_hand_off(produced=["r1"], finished=[])   # with msg.hand_off: ["r1"] -> then
    turn.handed_off_one("r1")     # its KV went to the hand-off area; it left the worker
    turn.report(worker_id, reason, ts)

Plain bookkeeping with the clock values passed in; the engine thread steps the engine and
times it. "replaced" and "error" are decided by the engine thread (a newer RunTurn, a step
that raised); they end a turn whatever this says.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from shared.protocol import RunTurn, TurnReport

if TYPE_CHECKING:
    from services.gpu_worker.engine.engine import StepInfo


@dataclass
class RunningTurn:
    turn_id: int
    model: str
    quota_s: float
    """Seconds from the start of the turn's first step after which no new step starts."""
    until_prefilled: bool
    requests: tuple[str, ...]
    """The listed requests this worker holds for `model`: what the turn computes."""
    idle_s: float = 0.0
    hand_off: bool = False
    """Disaggregated prefill: a request leaves the worker once it has its first token of this turn."""
    switch_s: float = 0.0
    admit_new: bool = False
    """Requests of `model` assigned while the turn runs join it."""
    linger_s: float = 0.0
    """An admitting turn whose requests are all done waits this long for a newcomer before it
    ends `done`: closed-loop clients send their next request as the last one ends, and that
    newcomer then joins at once instead of waiting a bus round trip for the next RunTurn."""
    lingering_since: float | None = None
    open: set[str] = field(default_factory=set)
    """Requests of the turn that have not finished (nor been cancelled or failed)."""
    produced: set[str] = field(default_factory=set)
    """Requests that produced a token in this turn."""
    prefilled: list[str] = field(default_factory=list)
    finished: list[str] = field(default_factory=list)
    handed_off: list[str] = field(default_factory=list)
    first_step_at: float | None = None
    stalled: bool = False
    """A step found nothing to run although requests were open (no KV page for any of them)."""
    prefill_steps: int = 0
    prefill_tokens: int = 0
    prefill_s: float = 0.0
    decode_steps: int = 0
    decode_tokens: int = 0
    decode_context_tokens: int = 0
    decode_s: float = 0.0

    @classmethod
    def start(cls, msg: RunTurn, request_ids: tuple[str, ...], idle_s: float = 0.0, linger_s: float = 0.0) -> RunningTurn:
        """`request_ids`: those of msg.request_ids that the worker holds for msg.model."""
        quota = msg.quota_s if not math.isnan(msg.quota_s) else 0.0
        return cls(
            msg.turn_id, msg.model, quota, msg.until_prefilled, tuple(request_ids), idle_s, msg.hand_off,
            open=set(request_ids), admit_new=msg.admit_new, linger_s=linger_s if msg.admit_new else 0.0,
        )

    def admit(self, request_id: str, model: str) -> bool:
        """A request assigned while the turn runs joins it when the turn admits newcomers of its model."""
        if not self.admit_new or model != self.model or request_id in self.open:
            return False
        self.requests += (request_id,)
        self.open.add(request_id)
        self.lingering_since = None
        return True

    def stepped(
        self,
        step: StepInfo | None,
        started_at: float,
        seconds: float,
        produced: list[str] = (),
        first: list[str] = (),
        finished: list[str] = (),
    ) -> None:
        """Counts one step: `step` is what the engine computed (None: nothing), `produced` the
        requests that got a token, `first` those whose token was their first on this worker."""
        if self.first_step_at is None:
            self.first_step_at = started_at
        if step is None:
            self.stalled = not produced
        elif step.is_prefill:
            self.prefill_steps += 1
            self.prefill_tokens += step.num_tokens
            self.prefill_s += seconds
        else:
            self.decode_steps += 1
            self.decode_tokens += step.num_tokens
            self.decode_context_tokens += step.context_tokens
            self.decode_s += seconds
        self.produced.update(produced)
        self.prefilled += [r for r in first if r in self.open]
        for request_id in finished:
            if request_id in self.open:
                self.open.discard(request_id)
                self.finished.append(request_id)

    def due_for_hand_off(self, produced: list[str], finished: list[str]) -> list[str]:
        """Of a step's requests, those to hand off now (call before `stepped`): in a hand-off
        turn, the open ones whose token is their first of the turn and not their last."""
        if not self.hand_off:
            return []
        done = set(finished)
        return [r for r in produced if r in self.open and r not in self.produced and r not in done]

    def handed_off_one(self, request_id: str) -> None:
        """Its KV went to the hand-off area (or, failing that, it will be recomputed): it left."""
        if request_id in self.open:
            self.open.discard(request_id)
            self.handed_off.append(request_id)

    def drop(self, request_id: str) -> None:
        """The request left the worker (cancelled, failed, released): the turn no longer waits for it."""
        self.open.discard(request_id)

    def end_reason(self, now: float) -> str | None:
        """Why the turn ends now, checked between steps; None while it goes on."""
        if not self.requests or self.stalled:
            return "idle"
        if not self.open:
            if self.linger_left(now) > 0:
                return None
            return "done"
        if self.until_prefilled and self.open <= self.produced:
            return "prefilled"
        if self.first_step_at is not None and now - self.first_step_at >= self.quota_s:
            return "quota"
        return None

    def linger_left(self, now: float) -> float:
        """Seconds this turn still waits for a newcomer with nothing to compute (0: not lingering)."""
        if self.open or self.linger_s <= 0 or self.stalled:
            return 0.0
        if self.lingering_since is None:
            self.lingering_since = now
        return max(self.lingering_since + self.linger_s - now, 0.0)

    def report(self, worker_id: str, reason: str, ts: float) -> TurnReport:
        return TurnReport(
            worker_id=worker_id,
            turn_id=self.turn_id,
            model=self.model,
            reason=reason,
            switch_s=self.switch_s,
            prefill_steps=self.prefill_steps,
            prefill_tokens=self.prefill_tokens,
            prefill_s=self.prefill_s,
            decode_steps=self.decode_steps,
            decode_tokens=self.decode_tokens,
            decode_context_tokens=self.decode_context_tokens,
            decode_s=self.decode_s,
            prefilled=tuple(self.prefilled),
            finished=tuple(self.finished),
            idle_s=self.idle_s,
            ts=ts,
            handed_off=tuple(self.handed_off),
        )
