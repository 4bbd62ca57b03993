"""The autoscaler's planner run against a Simulation in virtual time, as the autoscaler service
runs it against the bus: every tick_s it reads the router policy's snapshot and the workers,
calls decide() and carries out the actions.

- ScaleUp: a worker is asked for now (its GPU counts from now) and reports boot_s later;
- Place, Evict, Pin, Unpin, Drain, Undrain: the planner's state becomes a Placement that the
  policy gets a bus delay later (policy.on_placement): drained workers take no new request,
  moves cancel a request and resume it elsewhere;
- Release: the worker (it holds nothing) stops; its GPU stops counting. It stays on the
  Placement's drained list a while, until the policy has forgotten it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from typing import TYPE_CHECKING

from services.autoscaler.actions import Release, ScaleUp
from services.autoscaler.decide import decide
from services.autoscaler.orders import placement_of
from services.autoscaler.tick import InFlight, PlannerState, TickInput, WorkerInput
from services.autoscaler.windows import CounterWindow, SlidingCounts
from services.sim.autoscale import AutoscaleConfig, GpuLedger, model_facts, model_inputs
from shared.protocol import DrainOrder, Placement, TurnReport

if TYPE_CHECKING:
    from services.sim.run import Simulation

FORGET_RELEASED_S = 30.0
"""How long a released worker stays drained on the Placement (the policy forgets a silent worker
after its worker_timeout_s, 2 s by default)."""


class SimAutoscaler:
    def __init__(self, sim: Simulation, config: AutoscaleConfig):
        self.sim = sim
        self.config = config
        self.loop = sim.loop
        self.models = list(sim.workload.models)
        self.facts = model_facts(sim.cost, self.models)
        gpu = sim.cost.gpu
        self.gpu_bytes = gpu.memory_bytes - gpu.reserved_bytes
        self.window = CounterWindow(config.window_s, config.bucket_s)
        self.busy = SlidingCounts(config.window_s, config.bucket_s)
        """Per model, microseconds of GPU time its turns took (as the `tokens` count)."""
        self.state = PlannerState()
        self.ledger = GpuLedger()
        self.actions: Counter[str] = Counter()
        self._moved: set[tuple[str, str]] = set()
        self._booting: dict[str, object] = {}
        self._up: set[str] = set()
        self._released: dict[str, float] = {}
        self._sent: Placement | None = None
        self._ids = 0

    def start(self, workers: int) -> None:
        """`workers` up at time 0; the first tick after tick_s."""
        for _ in range(workers):
            worker_id = self._new_id()
            self.ledger.ask(worker_id, self.loop.now)
            self._boot(worker_id)
        self.loop.after(self.config.tick_s, self._tick)

    def _new_id(self) -> str:
        self._ids += 1
        return f"gpu{self._ids - 1:03d}"

    # ---- one tick ---------------------------------------------------------------------

    def _tick(self) -> None:
        now = self.loop.now
        actions, self.state = decide(self._observe(now), self.state, self.config.scaling)
        for action in actions:
            self.actions[type(action).__name__] += 1
            if isinstance(action, ScaleUp):
                for _ in range(action.count):
                    worker_id = self._new_id()
                    self.ledger.ask(worker_id, now)
                    self._booting[worker_id] = self.loop.after(self.config.boot_s, self._boot, worker_id)
            elif isinstance(action, Release):
                self._release(action.worker_id, now)
        self._send_placement(now)
        self.loop.after(self.config.tick_s, self._tick)

    def _observe(self, now: float) -> TickInput:
        snapshot = self.sim.policy.snapshot(now)
        in_flight = {}
        for load in snapshot.models:
            self.window.observe(now, snapshot.router_id, load.name, load.arrivals, load.tokens)
            in_flight[load.name] = load.queued + load.running
        counts = self.window.totals(now)
        busy_s = {m: us / 1e6 for m, (_, us) in self.busy.totals(now).items()}
        c = self.sim.config
        models = model_inputs(c.scheduling, self.facts, counts, in_flight, busy_s, self.config.window_s, c.tbt_s)
        held = self.sim.held_requests()
        workers = tuple(
            WorkerInput(
                w, True, tuple(self.models), self.config.host_bytes, self.gpu_bytes,
                in_flight=tuple(InFlight(r, m) for r, m in sorted(held.get(w, ()))),
            )
            for w in sorted(self._up | set(self._booting))
        )  # fmt: skip
        return TickInput(now, self.config.window_s, models, workers, snapshot.attainment)

    def on_turn_report(self, report: TurnReport) -> None:
        busy_s = report.switch_s + report.prefill_s + report.decode_s
        if busy_s > 0:
            self.busy.add(self.loop.now, report.model, 0, round(busy_s * 1e6))

    def _boot(self, worker_id: str) -> None:
        self._booting.pop(worker_id, None)
        self._up.add(worker_id)
        self.sim.add_worker(worker_id)

    def _release(self, worker_id: str, now: float) -> None:
        boot = self._booting.pop(worker_id, None)
        if boot is not None:
            boot.cancel()  # released before it came up
        elif worker_id in self._up:
            self._up.discard(worker_id)
            self.sim.release_worker(worker_id)
        self.ledger.release(worker_id, now)
        self._released[worker_id] = now

    # ---- orders to the router -----------------------------------------------------------

    def _send_placement(self, now: float) -> None:
        self._released = {w: t for w, t in self._released.items() if now - t < FORGET_RELEASED_S}
        placement = self._placement(now)
        has_moves = any(m.to_worker for d in placement.drains for m in d.moves)
        if placement is self._sent and not has_moves:
            return
        self._sent = placement
        self._moved |= {(m.request_id, m.to_worker) for d in placement.drains for m in d.moves if m.to_worker}
        self.loop.after(self.sim.config.bus_delay_s, self._deliver, placement)

    def _deliver(self, placement: Placement) -> None:
        self.sim.apply(self.sim.policy.on_placement(placement, self.loop.now))

    def _placement(self, now: float) -> Placement:
        """The planner's orders as the router reads them (orders.placement_of), released workers
        still drained; `self._sent` itself when nothing changed."""
        ordered = placement_of(self.state, None, now)
        drains = ordered.drains + tuple(DrainOrder(w) for w in sorted(self._released))
        sent = self._sent
        if sent is not None and (sent.workers, sent.pins, sent.drains) == (ordered.workers, ordered.pins, drains):
            return sent
        return replace(ordered, epoch=(sent.epoch if sent else 0) + 1, drains=drains)

    # ---- results ------------------------------------------------------------------------

    def summary(self, end_s: float) -> dict:
        gpu_seconds = self.ledger.gpu_seconds(end_s)
        return {
            "gpu_hours": round(gpu_seconds / 3600, 3),
            "peak_gpus": self.ledger.peak(),
            "mean_gpus": round(gpu_seconds / end_s, 3) if end_s > 0 else None,
            "gpus_at_end": self.ledger.in_use,
            "boot_s": self.config.boot_s,
            "actions": dict(sorted(self.actions.items())),
            "moves": len(self._moved),
        }
