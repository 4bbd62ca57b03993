"""The gpu_worker service: NATS on one side, the engine thread on the other.

    async with GpuWorker(config) as worker:
        await worker.run()        # until SIGTERM/SIGINT or worker.stop()

Commands on worker_commands(id) go to the engine thread: AssignRequest hands a request over
(it waits here), RunTurn has the thread compute one model for some of them until the turn
ends. Its TokenChunks are published in order by one task, one TokenBatch per token subject (a
gateway's inbox) for what queued up, each ended turn's TurnReport after
the tokens of that turn; WorkerState goes out every report_interval_s and on every change.
Workers on one machine share a KV hand-off area (config.kv_handoff_dir) for disaggregated
prefill: RunTurn.hand_off leaves KV there, AssignRequest.kv_handoff picks it up.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time

from services.gpu_worker import commands as cmd
from services.gpu_worker.coalesce import coalesce, token_batches
from services.gpu_worker.config import WorkerConfig, build_engine, engine_threads, max_running, plan_engine, served_models
from services.gpu_worker.engine.handoff import HandoffArea
from services.gpu_worker.engine_thread import EngineThread
from services.gpu_worker.gpu_metrics import read_gpu_metrics
from services.gpu_worker.reporter import worker_state
from shared import bus, env, subjects
from shared.catalog import Catalog, load_catalog
from shared.model_store import ModelStore
from shared.protocol import (
    AssignRequest,
    CancelAssignment,
    Placement,
    PrefetchModel,
    ProtocolError,
    RunTurn,
    decode,
    encode,
)

log = logging.getLogger("tokenpool.gpu_worker")


class WorkerError(RuntimeError):
    """The worker cannot serve (its engine failed to start or its loop broke)."""


class GpuWorker:
    def __init__(self, config: WorkerConfig, catalog: Catalog | None = None):
        self.config = config
        self.catalog = catalog or load_catalog(config.catalog, ModelStore.from_env().root)
        self.models = served_models(config, self.catalog)
        gpu = read_gpu_metrics(config.device)
        log.info("GPU: %s", f"{gpu.name}, {gpu.memory_free >> 20} MiB free" if gpu.available else gpu.reason)
        self.plan = plan_engine(config, self.catalog, gpu.memory_free if gpu.available else None)
        self.snapshot: cmd.Snapshot | None = None
        self._handed: dict[str, tuple[int, str]] = {}
        """Request id -> (its Assign command's number, model), until a snapshot has applied it."""
        self.accepting = True
        self._seq = 0
        self._stop = asyncio.Event()
        self._fatal: str | None = None
        self._outboxes: asyncio.Queue[cmd.Outbox | None] = asyncio.Queue()
        self._changed = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._thread: EngineThread | None = None
        self.nc = None
        self._sub = None

    # ---- lifecycle ------------------------------------------------------------------

    async def __aenter__(self) -> GpuWorker:
        c = self.config
        loop = asyncio.get_running_loop()
        self.nc = await bus.connect(c.nats, name=f"gpu_worker {c.worker_id}")
        plan = self.plan
        self._thread = EngineThread(
            lambda: build_engine(c, plan),
            self.models,
            plan.context_lengths,
            c.worker_id,
            lambda outbox: loop.call_soon_threadsafe(self._outboxes.put_nowait, outbox),
            kv_area=HandoffArea(c.kv_handoff_dir or env.kv_handoff_dir()),
            turn_linger_s=c.turn_linger_s,
        )
        self._thread.start()
        for coro in (self._publish_outboxes(), self._report_periodically(), self._watch_placement()):
            self._tasks.append(asyncio.create_task(coro))
        for task in self._tasks:
            task.add_done_callback(self._task_done)
        try:
            self._sub = await self.nc.subscribe(subjects.worker_commands(c.worker_id), cb=self._on_command)
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        n = engine_threads(c)
        threads = f" with {n} engine thread{'s' if n > 1 else ''}" if n else ""
        log.info("worker %s serving %s on %s%s", c.worker_id, ", ".join(self.models), c.device, threads)
        return self

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        try:
            await self._stop.wait()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
        if self._fatal:
            raise WorkerError(self._fatal)

    def stop(self) -> None:
        self._stop.set()

    async def __aexit__(self, *exc) -> None:
        self._tasks[-1].cancel()  # the placement watch: it can take seconds to notice a cancel
        await self._drain()
        self._thread.submit(cmd.Stop())
        if not await asyncio.to_thread(self._thread.join, 30.0):
            log.error("the engine thread did not stop within 30 s (stuck in a step?)")
        await self._outboxes.put(None)  # the publisher ends after what the thread handed over
        await _within(asyncio.gather(self._tasks[0], return_exceptions=True), 10.0, "publishing the last tokens")
        for task in self._tasks[1:]:
            task.cancel()
        await _within(asyncio.gather(*self._tasks[1:], return_exceptions=True), 5.0, "stopping the worker's tasks")
        await _within(self._publish_state(), 2.0, "the last state report")
        await bus.close(self.nc, f"worker {self.config.worker_id}")

    async def _drain(self) -> None:
        """Stops taking work; lets running requests finish for drain_timeout_s. What is left is
        released when the engine thread stops, and the router moves it to another worker."""
        self.accepting = False
        await self._publish_state()
        deadline = time.monotonic() + self.config.drain_timeout_s
        while self.snapshot is not None and self.snapshot.running and time.monotonic() < deadline and not self._fatal:
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), max(deadline - time.monotonic(), 0.01))
            except TimeoutError:
                break
        if self.snapshot is not None and self.snapshot.running:
            log.warning("releasing %d unfinished requests to the router: worker shutting down", len(self.snapshot.running))

    def _task_done(self, task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("worker task %s failed", task.get_coro().__name__, exc_info=task.exception())
            self._fatal = self._fatal or f"worker task failed: {task.exception()}"
            self.stop()

    # ---- commands -------------------------------------------------------------------

    async def _on_command(self, msg) -> None:
        try:
            command = decode(msg.data, AssignRequest, CancelAssignment, PrefetchModel, RunTurn)
        except ProtocolError as e:
            log.warning("dropping a command on %s: %s", msg.subject, e)
            return
        if isinstance(command, AssignRequest):
            if not self.accepting:
                log.info("not taking %s while shutting down; the router will move it", command.request.id)
                return
            number = self._thread.submit(cmd.Assign(command, msg.headers))
            self._handed[command.request.id] = (number, command.request.model)
        elif isinstance(command, RunTurn):
            # Also while draining: the requests held here only progress in the router's turns.
            self._thread.submit(cmd.Turn(command, msg.headers))
        elif isinstance(command, CancelAssignment):
            self._thread.submit(cmd.Cancel(command.request_id))
        else:
            self._thread.submit(cmd.Prefetch(command.model))

    async def _watch_placement(self) -> None:
        """Follows the autoscaler's placement; without JetStream the worker serves without one."""
        await bus.follow_placement(self.nc, self._on_placement, self._stop.is_set)

    def _on_placement(self, data: bytes) -> None:
        try:
            placement = decode(data, Placement)
        except ProtocolError as e:
            log.warning("ignoring placement: %s", e)
            return
        pinned = frozenset(m for p in placement.pins if p.worker_id == self.config.worker_id for m in p.models)
        for wp in placement.workers:
            if wp.worker_id == self.config.worker_id:
                log.info("placement epoch %d: keep %s in host memory%s", placement.epoch, ", ".join(wp.models) or "nothing",
                         f", {', '.join(sorted(pinned))} on the device" if pinned else "")
                self._thread.submit(cmd.Place(frozenset(wp.models), pinned))

    # ---- tokens and state -----------------------------------------------------------

    async def _publish_outboxes(self) -> None:
        state_due = False
        ended = False
        while not ended:
            # Outboxes that queued up while the previous ones were sent go out together, each
            # request's waiting tokens in one message (coalesce); none is held back for that.
            outboxes = [await self._outboxes.get()]
            while not self._outboxes.empty():
                outboxes.append(self._outboxes.get_nowait())
            if None in outboxes:  # the end: the thread has stopped and handed over everything
                outboxes, ended = outboxes[: outboxes.index(None)], True
            for subject, batch in token_batches(coalesce([c for outbox in outboxes for c in outbox.chunks])):
                try:
                    await self.nc.publish(subject, encode(batch))
                except Exception as e:  # a full reconnect buffer must not stop the other requests
                    log.error("could not publish tokens of %d requests on %s: %s", len(batch.chunks), subject, e)
            # After the tokens: a router that reads a turn's report has seen all of its tokens.
            for report in (r for outbox in outboxes for r in outbox.reports):
                try:
                    await self.nc.publish(subjects.TURN_REPORTS, encode(report))
                except Exception as e:
                    log.error("could not publish the report of turn %d: %s", report.turn_id, e)
            for outbox in outboxes:
                if outbox.snapshot is not None:
                    self.snapshot = outbox.snapshot
                if outbox.fatal:
                    self._fatal = self._fatal or outbox.fatal
                    self.stop()
                if outbox.changed or outbox.fatal:
                    self._changed.set()
                    state_due = True
            # One report for a burst of changes that queued up while tokens were being sent.
            if state_due and self._outboxes.empty():
                await self._publish_state()
                state_due = False

    async def _report_periodically(self) -> None:
        while True:
            await self._publish_state()
            await asyncio.sleep(self.config.report_interval_s)

    async def _publish_state(self) -> None:
        self._seq += 1
        applied = self.snapshot.applied if self.snapshot is not None else 0
        self._handed = {rid: h for rid, h in self._handed.items() if h[0] > applied}
        state = worker_state(
            self.config.worker_id, self.models, self.config.device, self.snapshot, self.accepting, self._seq, time.time(),
            max_running(self.config), {rid: model for rid, (_, model) in self._handed.items()},
        )
        try:
            await self.nc.publish(subjects.WORKER_STATE, encode(state))
        except Exception as e:
            log.warning("could not publish WorkerState: %s", e)


async def _within(awaitable, timeout_s: float, what: str) -> bool:
    try:
        await asyncio.wait_for(awaitable, timeout_s)
        return True
    except TimeoutError:
        log.warning("shutdown: %s took longer than %.0f s; going on without it", what, timeout_s)
        return False
