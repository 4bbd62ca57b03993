"""The autoscaler on the bus: watches worker and router reports, re-plans the placement
every interval and writes it to the PLACEMENT_BUCKET KV when it changed.

    async with AutoscalerService(config, model_sizes(catalog)) as autoscaler:
        await stop.wait()
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from nats.js.errors import KeyNotFoundError

from services.autoscaler.config import AutoscalerConfig
from services.autoscaler.loads import RecentLoads
from services.autoscaler.planner import plan
from shared import bus, subjects
from shared.protocol import Placement, ProtocolError, RouterState, WorkerState, decode, encode

log = logging.getLogger("tokenpool.autoscaler")


class AutoscalerService:
    def __init__(self, config: AutoscalerConfig, model_bytes: dict[str, int], clock: Callable[[], float] = time.monotonic):
        self.config = config
        self.model_bytes = model_bytes
        self.clock = clock
        self.placement: Placement | None = None
        self._workers: dict[str, tuple[WorkerState, float]] = {}
        self._loads = RecentLoads()
        self._nc = None
        self._kv = None
        self._task: asyncio.Task | None = None

    async def __aenter__(self) -> AutoscalerService:
        self._nc = await bus.connect(self.config.nats, name="tokenpool-autoscaler")
        self._kv = await bus.placement_bucket(self._nc)
        self.placement = await self._read_placement()
        await self._nc.subscribe(subjects.WORKER_STATE, cb=self._on_worker_state)
        await self._nc.subscribe(subjects.ROUTER_STATE, cb=self._on_router_state)
        self._task = asyncio.create_task(self._loop(), name="autoscaler-plan")
        log.info("autoscaler up on %s, placing %d models", self.config.nats, len(self.model_bytes))
        return self

    async def __aexit__(self, *exc) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._nc is not None and not self._nc.is_closed:
            await self._nc.drain()

    async def _on_worker_state(self, msg) -> None:
        try:
            state = decode(msg.data, WorkerState)
        except ProtocolError as e:
            log.warning("ignoring a malformed worker report: %s", e)
            return
        seen = self._workers.get(state.worker_id)
        if seen is None or state.seq > seen[0].seq or state.ts > seen[0].ts:
            self._workers[state.worker_id] = (state, self.clock())

    async def _on_router_state(self, msg) -> None:
        try:
            self._loads.observe(decode(msg.data, RouterState), self.clock())
        except ProtocolError as e:
            log.warning("ignoring a malformed router report: %s", e)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.interval_s)
            try:
                await self.replan()
            except Exception:  # noqa: BLE001 - logged; the next round tries again
                log.exception("planning the placement failed")

    async def replan(self) -> None:
        now = self.clock()
        live = [s for s, seen in self._workers.values() if now - seen <= self.config.worker_timeout_s]
        loads = self._loads.take(now, self.config.worker_timeout_s)
        if not live:
            return  # nothing to place on: keep the last placement for when workers come back
        placement = plan(live, loads, self.model_bytes, self.config.host_budget_bytes, self.placement, time.time())
        if placement is self.placement:
            return
        await self._kv.put(subjects.PLACEMENT_KEY, encode(placement))
        self.placement = placement
        placed = {m for w in placement.workers for m in w.models}
        log.info("placement epoch %d: %s", placement.epoch, {w.worker_id: w.models for w in placement.workers})
        if missing := sorted(set(self.model_bytes) - placed):
            log.warning("no live worker can hold %s (not served, or bigger than the host budget)", ", ".join(missing))

    async def _read_placement(self) -> Placement | None:
        try:
            entry = await self._kv.get(subjects.PLACEMENT_KEY)
        except KeyNotFoundError:
            return None
        try:
            return decode(entry.value, Placement)
        except ProtocolError as e:
            log.warning("ignoring the stored placement: %s", e)
            return Placement(epoch=entry.revision or 0, workers=(), ts=0.0)  # epochs still go up
