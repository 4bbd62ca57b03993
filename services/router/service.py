"""The router on the bus: feeds NATS messages to the policy and carries out its decisions.

    async with RouterService(config, catalog) as router:
        await stop.wait()

Restarts: requests stay in the JetStream work queue until acked. A router killed while
holding requests leaves them unacked; the next router on the same durable consumer gets
them again once ack_wait (default 30 s) has passed since their last in-progress touch.
Requests a worker is still running are adopted from the worker's reports (not run twice);
the others are assigned anew. A router stopped with SIGTERM hands its queued (unassigned)
requests back at once with a nak.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import replace

from services.router.config import RouterConfig
from services.router.decisions import Assign, Cancel, Decision, Done, Reject, StartTurn
from services.router.intake import RequestIntake
from services.router.metrics_http import MetricsServer
from services.router.policy import RouterPolicy
from services.router.turn_metrics import TurnMetrics
from shared import bus, subjects
from shared.periodic import every, stop_tasks
from shared.tracing import SpanBook
from shared.catalog import Catalog
from shared.metrics import Registry
from shared.protocol import (
    AssignRequest,
    CancelAssignment,
    CancelRequest,
    Placement,
    ProtocolError,
    TokenChunk,
    TurnReport,
    WorkerState,
    decode,
    encode,
    token_chunks,
)

log = logging.getLogger("tokenpool.router")


class RouterService:
    def __init__(self, config: RouterConfig, catalog: Catalog, clock: Callable[[], float] = time.monotonic):
        self.config = config
        self.clock = clock
        slos = {m: (catalog.slo(m).ttft_s, catalog.slo(m).tbt_s) for m in catalog.names()}
        # Turn ids from the wall clock, so a restarted router's turns never collide with old reports.
        first_turn_id = int(time.time() * 1000) * 1000
        self.policy = RouterPolicy(
            catalog.names(), config.policy, now=clock(), router_id=config.router_id, slos=slos, first_turn_id=first_turn_id
        )
        self.metrics = Registry()
        self._events = self.metrics.counter("tp_router_events_total", "Router events by kind.", ("event",))
        self._turns = TurnMetrics(self.metrics)
        self._http: MetricsServer | None = None
        self._nc = None
        self._intake: RequestIntake | None = None
        self._tasks: list[asyncio.Task] = []
        self._spans = SpanBook()

    async def __aenter__(self) -> RouterService:
        c = self.config
        self._nc = await bus.connect(c.nats, name=f"tokenpool-{c.router_id}")
        await bus.ensure_request_stream(self._nc)
        self._intake = RequestIntake(self._nc, c.consumer, c.ack_wait_s, c.max_ack_pending, self._count("malformed_request"))
        await self._intake.open()
        limits = dict(pending_msgs_limit=1_000_000, pending_bytes_limit=1 << 30)
        await self._nc.subscribe(subjects.WORKER_STATE, cb=self._handler(WorkerState, self.policy.on_worker_state))
        await self._nc.subscribe(subjects.TOKENS_ALL, cb=self._handler(TokenChunk, self.policy.on_tokens, read=token_chunks), **limits)
        await self._nc.subscribe(subjects.REQUEST_CANCEL, cb=self._handler(CancelRequest, self._cancel))
        await self._nc.subscribe(subjects.TURN_REPORTS, cb=self._handler(TurnReport, self._turn_report))
        if c.metrics_port is not None:
            self._http = MetricsServer(self.metrics, c.metrics_host, c.metrics_port)
            await self._http.start()
        self._tasks = [
            asyncio.create_task(self._take_requests(), name="router-intake"),
            self._every(c.tick_interval_s, self._tick, "router-tick"),
            self._every(c.state_interval_s, self._publish_state, "router-state"),
            self._every(c.in_progress_interval_s, self._intake.touch_all, "router-in-progress"),
            asyncio.create_task(bus.follow_placement(self._nc, self._on_placement, lambda: False), name="router-placement"),
        ]
        log.info("router %s up on %s (consumer %s)", c.router_id, c.nats, c.consumer)
        return self

    async def __aexit__(self, *exc) -> None:
        await stop_tasks(self._tasks, log)
        if self._intake is not None:
            await self._guard(self._intake.close(), "stop pulling requests")
            for request_id in self._intake.held:
                if self.policy.holder(request_id) is None:
                    await self._guard(self._intake.nak(request_id), "hand back queued request")
        await bus.close(self._nc, f"router {self.config.router_id}")
        if self._http is not None:
            await self._http.stop()
        log.info("router %s stopped", self.config.router_id)

    @property
    def metrics_url(self) -> str | None:
        return self._http.url if self._http is not None else None

    # ---- inputs ------------------------------------------------------------------------

    async def _take_requests(self) -> None:
        await asyncio.sleep(self.config.startup_wait_s)
        while not asyncio.current_task().cancelling():  # a swallowed cancel still counts (shared/periodic.py)
            try:
                requests = await self._intake.fetch()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - e.g. disconnected: keep trying, the bus reconnects
                if asyncio.current_task().cancelling():
                    raise  # a cancel that the client library turned into another error: we are stopping
                log.warning("fetching requests failed: %s", e)
                await asyncio.sleep(0.5)
                continue
            for request in requests:
                self._events.inc(event="request")
                self._spans.start(request.id, "router.queue", self._intake.headers(request.id), model=request.model)
                try:
                    await self._execute(self.policy.submit(request, self.clock()))
                except Exception:  # noqa: BLE001 - one bad request must not stop the intake
                    log.exception("taking request %s failed", request.id)

    def _handler(
        self, message_type: type, policy_call: Callable, read: Callable[[bytes], Iterable] | None = None
    ) -> Callable[..., Awaitable[None]]:
        """A subscription callback: each message `read` finds in the payload (default: one
        `message_type`) goes to the policy; an unreadable payload is logged and counted."""
        count_malformed = self._count(f"malformed_{message_type.__name__}")
        read = read or (lambda data: (decode(data, message_type),))

        async def handle(msg) -> None:
            try:
                messages = read(msg.data)
            except ProtocolError as e:
                log.warning("ignoring a malformed message on %s: %s", msg.subject, e)
                count_malformed()
                return
            for message in messages:
                try:
                    await self._execute(policy_call(message, self.clock()))
                except Exception:  # noqa: BLE001 - one bad message must not stop the subscription
                    log.exception("handling %s failed", message_type.__name__)

        return handle

    async def _on_placement(self, data: bytes) -> None:
        try:
            placement = decode(data, Placement)
        except ProtocolError as e:
            log.warning("ignoring the stored placement: %s", e)
            return
        if placement.drains:
            log.info("placement epoch %d: draining %s", placement.epoch, ", ".join(d.worker_id for d in placement.drains))
        await self._execute(self.policy.on_placement(placement, self.clock()))

    def _turn_report(self, report: TurnReport, now: float) -> list[Decision]:
        self._turns.record(report)
        return self.policy.on_turn_report(report, now)

    def _cancel(self, message: CancelRequest, now: float) -> list[Decision]:
        return self.policy.cancel(message.request_id, now)

    async def _tick(self) -> None:
        await self._execute(self.policy.tick(self.clock()))

    async def _publish_state(self) -> None:
        state = replace(self.policy.snapshot(self.clock()), ts=time.time())
        await self._nc.publish(subjects.ROUTER_STATE, encode(state))

    # ---- outputs -----------------------------------------------------------------------

    async def _execute(self, decisions: list[Decision]) -> None:
        for d in decisions:
            self._events.inc(event=type(d).__name__.lower())
            try:
                await self._carry_out(d)
            except Exception as e:  # noqa: BLE001 - as in _guard; the decision is described only then
                self._events.inc(event="io_error")
                log.warning("%s %s failed: %s", type(d).__name__, d, e)

    async def _carry_out(self, d: Decision) -> None:
        publish = self._nc.publish
        if isinstance(d, Assign):
            log.debug("assign %s to %s (resume %d tokens)", d.request.id, d.worker_id, len(d.resume_token_ids))
            headers = self._spans.headers(d.request.id)
            self._spans.end(d.request.id, worker=d.worker_id, resumed_tokens=len(d.resume_token_ids))
            message = encode(AssignRequest(d.request, d.resume_token_ids, d.kv_handoff))
            await publish(subjects.worker_commands(d.worker_id), message, headers=headers or None)
        elif isinstance(d, Reject):
            log.info("reject %s: %s %s", d.request.id, d.error.code, d.error.message)
            self._spans.end(d.request.id, error=d.error.code)
            chunk = TokenChunk(d.request.id, d.index, error=d.error)
            await self._guard(publish(d.request.token_subject, encode(chunk)), f"error chunk for {d.request.id}")
            await self._intake.ack(d.request.id)
        elif isinstance(d, Cancel):
            await publish(subjects.worker_commands(d.worker_id), encode(CancelAssignment(d.request_id)))
        elif isinstance(d, Done):
            self._spans.end(d.request_id)
            await self._intake.ack(d.request_id)
        elif isinstance(d, StartTurn):
            log.debug("turn %d on %s: %s x%d quota %.3fs", d.turn.turn_id, d.worker_id, d.turn.model, len(d.turn.request_ids), d.turn.quota_s)
            await publish(subjects.worker_commands(d.worker_id), encode(d.turn))

    async def _guard(self, action: Awaitable[None], what: str) -> None:
        try:
            await action
        except Exception as e:  # noqa: BLE001 - logged and counted; the request is redelivered or retried
            self._events.inc(event="io_error")
            log.warning("%s failed: %s", what, e)

    def _count(self, event: str) -> Callable[[], None]:
        return lambda: self._events.inc(event=event)

    def _every(self, interval_s: float, action: Callable[[], Awaitable[None]], name: str) -> asyncio.Task:
        return every(interval_s, action, name, log)
