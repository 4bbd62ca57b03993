"""What the autoscaler has seen on the bus, turned into the planner's TickInput. Pure: reports
and times in, a TickInput out.

    seen = Observations(models, window_s=60, worker_timeout_s=2, host_bytes=8 << 30, gpu_bytes=80 << 30)
    seen.worker(state, now); seen.router(state, now); seen.turn(report)
    tick = seen.tick(now)

Routers report cumulative counters (arrivals and requested tokens per model since they
started); the window counts their increases (a restarted router starts again from 0). A
model's decode step time comes from the workers' TurnReports (decode_s / decode_steps,
smoothed), so the demand estimate follows the hardware the pool really runs on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from services.autoscaler.tick import InFlight, ModelInput, TickInput, WorkerInput
from services.autoscaler.windows import CounterWindow
from shared.protocol import RouterState, TurnReport, WorkerState

STEP_SMOOTHING = 0.2
"""Weight of the newest TurnReport in a model's decode step estimate."""


@dataclass(frozen=True)
class ModelFacts:
    bytes: int
    tbt_s: float
    decode_step_s: float = 0.02
    """Until a TurnReport says otherwise."""


class Observations:
    def __init__(self, models: Mapping[str, ModelFacts], *, window_s: float, worker_timeout_s: float,
                 host_bytes: int, gpu_bytes: int):
        self.models = dict(models)
        self.window_s = window_s
        self.worker_timeout_s = worker_timeout_s
        self.host_bytes = host_bytes
        self.gpu_bytes = gpu_bytes
        self._window = CounterWindow(window_s, window_s / 12)
        self._workers: dict[str, tuple[WorkerState, float]] = {}
        self._routers: dict[str, tuple[RouterState, float]] = {}
        self._step_s: dict[str, float] = {}
        self._host_bytes: dict[str, int] = {}
        """The most host memory a worker reported a model taking; can exceed the checkpoint's
        size (a CPU engine computes in float32 and keeps packed copies)."""

    def worker(self, state: WorkerState, now: float) -> None:
        seen = self._workers.get(state.worker_id)
        if seen is None or state.seq > seen[0].seq or state.ts > seen[0].ts:
            self._workers[state.worker_id] = (state, now)
        for r in state.models:
            if r.host_bytes > self._host_bytes.get(r.name, 0):
                self._host_bytes[r.name] = r.host_bytes

    def router(self, state: RouterState, now: float) -> None:
        for load in state.models:
            if load.name in self.models:
                self._window.observe(now, state.router_id, load.name, load.arrivals, load.tokens)
        self._routers[state.router_id] = (state, now)

    def turn(self, report: TurnReport) -> None:
        if report.model not in self.models or report.decode_steps <= 0 or report.decode_s <= 0:
            return
        step_s = report.decode_s / report.decode_steps
        before = self._step_s.get(report.model)
        self._step_s[report.model] = step_s if before is None else before + STEP_SMOOTHING * (step_s - before)

    def live_workers(self, now: float) -> list[str]:
        return sorted(w for w, (_, seen) in self._workers.items() if now - seen <= self.worker_timeout_s)

    def tick(self, now: float) -> TickInput:
        counts = self._window.totals(now)
        routers = [s for s, seen in self._routers.values() if now - seen <= self.worker_timeout_s]
        in_flight = {m: 0 for m in self.models}
        for state in routers:
            for load in state.models:
                if load.name in in_flight:
                    in_flight[load.name] += load.queued + load.running
        models = tuple(
            ModelInput(
                name, max(facts.bytes, self._host_bytes.get(name, 0)), *counts.get(name, (0, 0)), in_flight=in_flight[name],
                decode_step_s=self._step_s.get(name, facts.decode_step_s), tbt_s=facts.tbt_s,
            )
            for name, facts in sorted(self.models.items())
        )
        workers = tuple(self._worker_input(state, now - seen <= self.worker_timeout_s)
                        for state, seen in sorted(self._workers.values(), key=lambda s: s[0].worker_id))
        attainments = [s.attainment for s in routers if s.attainment is not None]
        attainment = min(attainments) if attainments else None
        return TickInput(now, self.window_s, models, workers, attainment)

    def forget(self, worker_id: str) -> None:
        """A released worker: its last report must not make it look live."""
        self._workers.pop(worker_id, None)

    def _worker_input(self, state: WorkerState, live: bool) -> WorkerInput:
        running_models = state.running_models or ("",) * len(state.running)
        return WorkerInput(
            state.worker_id,
            live,
            tuple(m for m in state.serving if m in self.models),
            self.host_bytes,
            self.gpu_bytes,
            resident=tuple(r.name for r in state.models if r.tier in ("host", "device") and r.name in self.models),
            in_flight=tuple(InFlight(rid, model) for rid, model in zip(state.running, running_models)),
        )
