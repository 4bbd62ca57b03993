"""The autoscaler on the bus: watches worker, router and turn reports, runs the planner
(decide.py) every interval, writes its orders (Placement) and its own state to the
PLACEMENT_BUCKET KV, and starts or releases workers through its connector.

    async with AutoscalerService(config, facts, connector=LocalConnector(...)) as autoscaler:
        await stop.wait()

Without a connector the pool is fixed: the planner places models over the live workers and
never drains one (nothing could release it).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import replace

from nats.js.errors import KeyNotFoundError

from services.autoscaler.actions import Drain, Release, ScaleUp, Undrain
from services.autoscaler.config import AutoscalerConfig
from services.autoscaler.connectors.base import Connector, ConnectorError
from services.autoscaler.decide import decide
from services.autoscaler.observe import ModelFacts, Observations
from services.autoscaler.orders import STATE_KEY, decode_state, encode_state, placement_of
from services.autoscaler.scaling_config import ScalingConfig
from services.autoscaler.tick import PlannerState, TickInput
from shared import bus, subjects
from shared.periodic import every, stop_tasks
from shared.protocol import Placement, ProtocolError, RouterState, TurnReport, WorkerState, decode, encode

log = logging.getLogger("tokenpool.autoscaler")


class AutoscalerService:
    def __init__(self, config: AutoscalerConfig, models: dict[str, ModelFacts], connector: Connector | None = None,
                 clock: Callable[[], float] = time.time):
        self.config = config
        self.connector = connector
        self.clock = clock
        self.seen = Observations(models, window_s=config.window_s, worker_timeout_s=config.worker_timeout_s,
                                 host_bytes=config.host_budget_bytes, gpu_bytes=config.gpu_budget_bytes)
        self.state = PlannerState()
        self.placement: Placement | None = None
        self._booting: dict[str, float] = {}
        self._starting = 0
        """Workers asked of the connector whose start has not returned yet."""
        self._tasks: set[asyncio.Task] = set()
        self._nc = None
        self._kv = None
        self._task: asyncio.Task | None = None

    async def __aenter__(self) -> AutoscalerService:
        self._nc = await bus.connect(self.config.nats, name="tokenpool-autoscaler")
        self._kv = await bus.placement_bucket(self._nc)
        self.placement = await self._read(subjects.PLACEMENT_KEY, lambda b: decode(b, Placement), "placement")
        self.state = await self._read(STATE_KEY, decode_state, "planner state") or PlannerState()
        await self._nc.subscribe(subjects.WORKER_STATE, cb=self._on(WorkerState, self.seen.worker))
        await self._nc.subscribe(subjects.ROUTER_STATE, cb=self._on(RouterState, self.seen.router))
        await self._nc.subscribe(subjects.TURN_REPORTS, cb=self._on(TurnReport, lambda r, now: self.seen.turn(r)))
        if self.connector is not None:
            s = self.state
            self.connector.reserve({*s.placement, *s.draining, *s.released})
        if self.connector is not None and self.config.initial_workers:
            await self._start_workers(self.config.initial_workers, "initial workers")
        self._task = every(self.config.interval_s, self.replan, "planning", log)
        mode = f"connector {self.connector.name}" if self.connector else "fixed pool (no connector)"
        log.info("autoscaler up on %s, %d models, %s", self.config.nats, len(self.seen.models), mode)
        return self

    async def __aexit__(self, *exc) -> None:
        await stop_tasks([self._task], log)
        if self.connector is not None:
            await self.connector.close()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await bus.close(self._nc, "autoscaler")

    def _on(self, message_type: type, observe: Callable):
        async def handle(msg) -> None:
            try:
                observe(decode(msg.data, message_type), self.clock())
            except ProtocolError as e:
                log.warning("ignoring a malformed %s: %s", message_type.__name__, e)
        return handle

    async def replan(self) -> None:
        now = self.clock()
        tick = self.seen.tick(now)
        live = [w.worker_id for w in tick.workers if w.live]
        for worker_id in [w for w, t in self._booting.items() if w in live or now - t > self.config.boot_timeout_s]:
            if worker_id not in live:
                log.warning("worker %s did not report within %.0f s of its start", worker_id, self.config.boot_timeout_s)
            del self._booting[worker_id]
        if not live and (self.connector is None or self._booting or self._starting):
            return  # nothing to place on yet: keep the last placement for when workers come
        actions, state = decide(tick, self.state, self._scaling(tick))
        for action in actions:
            await self._carry_out(action)
        placement = placement_of(state, self.placement, now)
        if placement is not self.placement:
            await self._kv.put(subjects.PLACEMENT_KEY, encode(placement))
            log.info("placement epoch %d: %s%s", placement.epoch, {w.worker_id: w.models for w in placement.workers},
                     f"; draining {[d.worker_id for d in placement.drains]}" if placement.drains else "")
            self.placement = placement
        if state != self.state:
            await self._kv.put(STATE_KEY, encode_state(state))
            self.state = state

    def _scaling(self, tick: TickInput) -> ScalingConfig:
        if self.connector is not None:
            return self.config.scaling
        live = max(1, sum(w.live for w in tick.workers))
        return replace(self.config.scaling, min_workers=live, max_workers=live)

    async def _carry_out(self, action) -> None:
        if isinstance(action, ScaleUp):
            count = action.count - len(self._booting) - self._starting
            if count > 0:
                self._background(self._start_workers(count, action.reason), "scale-up")
        elif isinstance(action, Release):
            log.info("releasing %s (%s)", action.worker_id, action.reason)
            self.seen.forget(action.worker_id)
            if self.connector is not None and action.reason == "drained":
                self._background(self._release(action.worker_id), f"release-{action.worker_id}")
        elif isinstance(action, (Drain, Undrain)):
            log.info("%s", action)
        else:
            log.debug("%s", action)

    def _background(self, coro, name: str) -> None:
        """Starts and releases run beside the planning loop: a worker's start is watched for
        seconds and a release waits for the worker to drain."""
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _start_workers(self, count: int, reason: str) -> None:
        self._starting += count
        try:
            started = await self.connector.start(count)
        except ConnectorError as e:
            log.error("could not start %d worker(s) (%s): %s", count, reason, e)
            started = e.started
        finally:
            self._starting -= count
        log.info("started %s (%s)", ", ".join(started), reason)
        now = self.clock()
        self._booting |= {w: now for w in started}

    async def _release(self, worker_id: str) -> None:
        try:
            await self.connector.release(worker_id)
        except ConnectorError as e:  # e.g. a worker this connector did not start (local) or that is gone
            log.warning("could not release %s: %s", worker_id, e)

    async def _read(self, key: str, parse: Callable, what: str):
        try:
            entry = await self._kv.get(key)
        except KeyNotFoundError:
            return None
        try:
            return parse(entry.value)
        except (ProtocolError, ValueError) as e:
            log.warning("ignoring the stored %s: %s", what, e)
            return None
