"""The engine loop, in the one thread that owns the Engine (the engine is not thread-safe).

    take commands -> start the router's turn (park, switch, prefetch) -> engine.step(its requests)
    -> hand the tokens over -> end the turn when turn.py says so -> report it -> wait for the next

The router decides which model computes and for which requests (RunTurn); the thread runs
that turn step by step without a bus round trip per token, and reports it (TurnReport) when
it ends. Requests assigned but in no turn wait here. A RunTurn that arrives while another
runs replaces it at the next step boundary (the old one is reported first).

Disaggregated prefill on one machine: in a turn with `hand_off`, a request that gets its first
token of the turn (published as usual) leaves its KV in the machine's hand-off area and the
worker: it is aborted silently and listed in TurnReport.handed_off. An AssignRequest with
`kv_handoff` starts from that entry instead of a prefill; if the entry is missing or unusable
the request is prefilled from its prompt and resume tokens (recompute), as without one.

asyncio talks to it through `submit(command)`; the thread hands each step's TokenChunks,
finished turns' reports and a state snapshot back through `deliver(Outbox)`, which the
service wraps with loop.call_soon_threadsafe. With no turn the thread blocks on its queue.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from opentelemetry import trace

from services.gpu_worker.assignments import (
    Assignment,
    assignment,
    engine_request,
    error_chunk,
    error_info,
    finished_chunk,
    token_chunk,
)
from services.gpu_worker.commands import (
    Assign,
    Cancel,
    Command,
    ModelShape,
    Outbox,
    Place,
    Prefetch,
    Snapshot,
    Stop,
    Turn,
)
from services.gpu_worker.engine.engine import Engine
from services.gpu_worker.engine.errors import EngineError
from services.gpu_worker.engine.handoff import HandoffArea, KvHandoffError
from services.gpu_worker.engine.residency import Tier
from services.gpu_worker.engine.sequence import EngineRequest
from services.gpu_worker.turn import RunningTurn
from shared import env
from shared.protocol import AssignRequest, ErrorInfo, TokenChunk, TurnReport
from shared.tracing import SpanBook, extract, tracer

log = logging.getLogger("tokenpool.gpu_worker.engine_thread")


@dataclass
class _Pending:
    chunks: list[tuple[str, TokenChunk]] = field(default_factory=list)
    reports: list[TurnReport] = field(default_factory=list)
    changed: bool = False


class EngineThread:
    def __init__(
        self,
        make_engine: Callable[[], Engine],
        models: list[str],
        context_lengths: dict[str, int | None],
        worker_id: str,
        deliver: Callable[[Outbox], None],
        clock: Callable[[], float] = time.perf_counter,
        kv_area: HandoffArea | None = None,
        turn_linger_s: float = 0.0,
    ):
        """`kv_area`: this machine's KV hand-off area (default: the one shared/env.py names);
        `turn_linger_s`: how long an admitting turn with nothing left waits for a newcomer."""
        self._linger_s = turn_linger_s
        self._make_engine = make_engine
        self._models = list(models)
        self._context_lengths = context_lengths
        self._worker_id = worker_id
        self._deliver = deliver
        self._clock = clock
        self._kv_area = kv_area or HandoffArea(env.kv_handoff_dir())
        self._commands: queue.SimpleQueue[Command] = queue.SimpleQueue()
        self._submitted = itertools.count(1)
        self._applied = 0
        self._thread = threading.Thread(target=self._run, name="engine", daemon=True)
        self._engine: Engine | None = None
        self._shapes: tuple[tuple[str, ModelShape], ...] = ()
        self._requests: dict[str, Assignment] = {}
        self._spans = SpanBook()
        self._prefilling: set[str] = set()
        self._turn: RunningTurn | None = None
        self._turn_span: trace.Span | None = None
        self._next: Turn | None = None
        """The latest RunTurn not started yet; it starts at the next step boundary."""
        self._idle_since: float | None = None
        """When the latest turn ended (or the engine became ready); None while a turn runs or takes over."""
        self._ready = False
        self._pending = _Pending()

    def start(self) -> None:
        self._thread.start()

    def submit(self, command: Command) -> int:
        """Queues the command for the thread; returns its number (Snapshot.applied counts them)."""
        number = next(self._submitted)
        self._commands.put(command)
        return number

    def join(self, timeout: float | None = None) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    # ---- the loop -------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._engine = self._make_engine()
            self._preload()
        except Exception as e:
            log.exception("engine start-up failed")
            self._deliver(Outbox(fatal=f"engine start-up failed: {type(e).__name__}: {e}"))
            self._close()
            return
        try:
            while self._loop_once():
                pass
        except Exception as e:
            log.exception("engine loop failed")
            self._fail_all(_server_error(e))
            self._close_turn_span("error")
            self._flush(fatal=f"engine loop failed: {type(e).__name__}: {e}")
        finally:
            self._close()

    def _close(self) -> None:
        if self._engine is not None:
            self._engine.close()

    def _preload(self) -> None:
        for name in self._models:
            self._engine.load(name)
            self._pending.changed = True
            self._flush()
        if self._models:
            self._engine.activate(self._models[0])
        shapes = {name: self._engine.slot(name) for name in self._models}
        self._shapes = tuple((n, ModelShape(s.block_tokens, s.weight_bytes, s.host_bytes)) for n, s in shapes.items())
        self._ready = True
        self._idle_since = self._clock()
        self._pending.changed = True
        self._flush()

    def _loop_once(self) -> bool:
        linger = self._turn.linger_left(self._clock()) if self._turn is not None else 0.0
        for command in self._take_commands(block=self._turn is None or linger > 0, timeout=linger or None):
            if isinstance(command, Stop):
                self._release_all()
                self._close_turn_span("stopped")
                self._flush()
                return False
            self._apply(command)
            self._applied += 1
        if self._next is not None:
            command, self._next = self._next, None
            self._begin(command)
        if self._turn is not None:
            self._step()
        self._flush()
        return True

    def _take_commands(self, block: bool, timeout: float | None = None) -> list[Command]:
        commands = []
        if block:
            try:
                commands.append(self._commands.get(timeout=timeout))
            except queue.Empty:
                return commands
        while True:
            try:
                commands.append(self._commands.get_nowait())
            except queue.Empty:
                return commands

    def _flush(self, fatal: str | None = None) -> None:
        p = self._pending
        if not (p.chunks or p.reports or p.changed or fatal):
            return
        self._pending = _Pending()
        self._deliver(Outbox(tuple(p.chunks), self._snapshot(), p.changed, fatal, reports=tuple(p.reports)))

    def _snapshot(self) -> Snapshot:
        turn_id = self._turn.turn_id if self._turn is not None else 0
        running = tuple(sorted(self._requests))
        models = tuple(self._requests[r].model for r in running)
        return Snapshot(self._ready, self._engine.stats(), running, turn_id, self._shapes, models, self._applied)

    # ---- commands -------------------------------------------------------------------

    def _apply(self, command: Command) -> None:
        if isinstance(command, Assign):
            self._assign(command.msg, command.headers)
        elif isinstance(command, Turn):
            if self._next is not None:  # never started: a newer one came in the same breath
                self._begin(self._next, superseded=True)
            self._next = command
        elif isinstance(command, Cancel):
            self._cancel(command.request_id)
        elif isinstance(command, Prefetch):
            self._prefetch(command.model)
        elif isinstance(command, Place):
            self._place(command.models)
            self._engine.pin(command.pinned & command.models)

    def _assign(self, msg: AssignRequest, headers: dict | None = None) -> None:
        a = assignment(msg)
        if a.request_id in self._requests:
            log.warning("request %s is already running here; ignoring the repeated assignment", a.request_id)
            return
        try:
            request = engine_request(msg, self._context_lengths.get(a.model))
            if request is None:
                self._emit(a, finished_chunk(a, self._worker_id))
                return
            imported = bool(msg.kv_handoff) and self._import_kv(request, msg.kv_handoff)
            if not imported:
                self._engine.add_request(request)
        except Exception as e:
            if not isinstance(e, EngineError):
                log.exception("request %s: unexpected error while adding it", a.request_id)
            self._emit(a, error_chunk(a, error_info(e), self._worker_id))
            return
        self._requests[a.request_id] = a
        if self._turn is not None:
            self._turn.admit(a.request_id, a.model)
        self._spans.start(
            a.request_id, "worker.prefill", headers, model=a.model, resumed_tokens=a.resumed, kv_imported=imported
        )
        self._prefilling.add(a.request_id)
        self._pending.changed = True
        log.debug(
            "request %s: %s, %d prompt + %d resumed tokens%s",
            a.request_id, a.model, a.prompt_tokens, a.resumed, ", KV imported" if imported else "",
        )

    def _import_kv(self, request: EngineRequest, name: str) -> bool:
        """Adds the request with the KV of hand-off entry `name`, which is then deleted; False
        (nothing added) when the entry cannot be used: the request is prefilled from its tokens."""
        if not hasattr(self._engine, "export_kv"):  # the echo engine holds no KV
            return False
        try:
            self._engine.add_request(request, kv_entry=self._kv_area.path(name))
            return True
        except KvHandoffError as e:
            log.warning("request %s: %s; recomputing its KV from its tokens", request.request_id, e)
            return False
        finally:
            self._kv_area.remove(name)

    def _cancel(self, request_id: str) -> None:
        self._end_spans(request_id, outcome="cancelled")
        self._engine.abort(request_id)
        if self._requests.pop(request_id, None) is not None:
            self._pending.changed = True
        if self._turn is not None:
            self._turn.drop(request_id)

    def _prefetch(self, model: str) -> None:
        try:
            self._engine.prefetch(model)
            self._pending.changed = True
        except EngineError as e:
            log.warning("prefetch of %s refused: %s", model, e)

    def _place(self, placed: frozenset[str]) -> None:
        for name in self._models:
            tier = self._engine.tier(name)
            try:
                if name in placed and tier is Tier.DISK:
                    self._engine.load(name)
                elif name not in placed and tier is not Tier.DISK and not self._engine.has_work(name):
                    self._engine.unload(name)
                else:
                    continue
            except EngineError as e:
                log.warning("placement: could not move %s: %s", name, e)
            self._pending.changed = True

    def _release_all(self) -> None:
        """Drops every request without a word to its client: once this worker falls silent the
        router re-assigns them with the tokens already produced, so the client sees no error."""
        for request_id in list(self._requests):
            self._end_spans(request_id, outcome="released")
            self._engine.abort(request_id)
            del self._requests[request_id]
        self._pending.changed = True

    def _fail_all(self, error: ErrorInfo) -> None:
        for request_id in list(self._requests):
            self._fail(request_id, error)

    def _fail(self, request_id: str, error: ErrorInfo) -> None:
        self._end_spans(request_id, outcome="failed", error=error.code)
        self._engine.abort(request_id)
        a = self._requests.pop(request_id)
        self._emit(a, error_chunk(a, error, self._worker_id))
        if self._turn is not None:
            self._turn.drop(request_id)

    def _emit(self, a: Assignment, chunk: TokenChunk) -> None:
        self._pending.chunks.append((a.token_subject, chunk))
        self._pending.changed |= chunk.finish_reason is not None or chunk.error is not None

    # ---- turns ----------------------------------------------------------------------

    def _begin(self, command: Turn, superseded: bool = False) -> None:
        """Starts the router's turn: the running one (if any) ends as replaced; the park list goes
        to host memory; the model is made computable (timed: switch_s); the prefetch starts.
        A `superseded` turn never starts: a newer one arrived with it; it is only reported."""
        msg = command.msg
        if self._turn is not None:
            self._end_turn("replaced")
        idle_s = 0.0
        if self._idle_since is not None and not superseded:
            idle_s = max(self._clock() - self._idle_since, 0.0)
        attributes = {"turn_id": msg.turn_id, "model": msg.model, "quota_s": msg.quota_s}
        self._turn_span = tracer().start_span("worker.turn", context=extract(command.headers), attributes=attributes)
        if superseded:
            self._turn = RunningTurn.start(msg, ())
            self._end_turn("replaced", idle_after=False)
            return
        self._idle_since = None
        self._park(msg.park)
        self._turn = turn = RunningTurn.start(msg, self._turn_requests(msg), idle_s, self._linger_s)
        log.debug("turn %d: %s for %s, quota %.3f s", msg.turn_id, msg.model, ", ".join(turn.requests), msg.quota_s)
        if turn.requests:
            try:
                turn.switch_s = self._make_computable(msg.model, turn.requests)
            except Exception as e:
                log.exception("turn %d: could not switch to %s; failing its requests", msg.turn_id, msg.model)
                self._fail_turn(_server_error(e))
                return
        if msg.prefetch:
            self._start_prefetch(msg.prefetch, msg.model)

    def _turn_requests(self, msg) -> tuple[str, ...]:
        """The listed requests this worker holds for the turn's model; others are ignored."""
        ids = []
        for request_id in dict.fromkeys(msg.request_ids):
            a = self._requests.get(request_id)
            if a is None:
                log.debug("turn %d: request %s is not held here (finished or cancelled?)", msg.turn_id, request_id)
            elif a.model != msg.model:
                log.warning(
                    "turn %d is for %s but lists request %s of %s; ignoring that request",
                    msg.turn_id, msg.model, request_id, a.model,
                )
            else:
                ids.append(request_id)
        return tuple(ids)

    def _park(self, request_ids: tuple[str, ...]) -> None:
        if not request_ids:
            return
        try:
            if self._engine.swap_out(request_ids=request_ids):
                self._pending.changed = True
        except EngineError as e:
            log.warning("could not park %d requests' KV in host memory: %s", len(request_ids), e)

    def _make_computable(self, model: str, request_ids: tuple[str, ...]) -> float:
        """Activates the model and swaps its turn's requests back in; returns the seconds it took."""
        started = self._clock()
        previous = self._engine.active
        if previous != model:
            with tracer().start_as_current_span(
                "worker.model_switch",
                context=trace.set_span_in_context(self._turn_span),
                attributes={"from": previous or "", "to": model},
            ):
                self._engine.activate(model)
            self._pending.changed = True
        if self._engine.swap_in(model=model, request_ids=request_ids):
            self._pending.changed = True
        self._engine.synchronize()
        return self._clock() - started

    def _start_prefetch(self, model: str, computing: str) -> None:
        if model == computing:
            return
        if model not in self._models:
            log.warning("prefetch of %s ignored: this worker does not serve it", model)
        elif self._engine.tier(model) is Tier.HOST:
            self._prefetch(model)  # its copy overlaps this turn's steps

    def _step(self) -> None:
        turn = self._turn
        if self._end_if_over(turn) or not turn.open:
            return  # (lingering: nothing to compute until a newcomer joins)
        started = self._clock()
        try:
            outputs = self._engine.step(turn.open)
        except Exception as e:
            log.exception("turn %d: a step of %s failed; failing its requests", turn.turn_id, turn.model)
            self._fail_turn(_server_error(e))
            return
        seconds = self._clock() - started
        produced, first, finished = [], [], []
        for out in outputs:
            a = self._requests.get(out.request_id)
            if a is None:
                continue
            produced.append(out.request_id)
            if a.produced == 0:
                first.append(out.request_id)
            self._emit(a, token_chunk(a, out, self._worker_id))
            if out.request_id in self._prefilling:
                self._prefilling.discard(out.request_id)
                parent = self._spans.headers(out.request_id)
                self._spans.end(out.request_id)
                self._spans.start(out.request_id, "worker.decode", parent, model=a.model)
            if out.finish_reason is not None:
                finished.append(out.request_id)
                self._end_spans(out.request_id, outcome=out.finish_reason, tokens=a.next_index)
                log.debug("request %s finished (%s) after %d tokens", a.request_id, out.finish_reason, a.next_index)
                del self._requests[out.request_id]
        leaving = turn.due_for_hand_off(produced, finished)
        turn.stepped(self._engine.last_step, started, seconds, produced, first, finished)
        for request_id in leaving:
            self._hand_off(request_id)
        self._end_if_over(turn)

    def _hand_off(self, request_id: str) -> None:
        """Leaves the request's KV in the hand-off area and lets the request go without a word
        to its client: the router moves it to a decode worker. Should the export fail, it goes
        all the same, and the decode worker, finding no entry, recomputes its KV."""
        path = self._kv_area.path(request_id)
        try:
            if hasattr(self._engine, "export_kv"):  # the echo engine holds no KV: nothing to leave
                self._engine.export_kv(request_id, path)
        except Exception as e:
            if isinstance(e, EngineError):
                log.warning("request %s: could not hand its KV off (%s); it will be recomputed", request_id, e)
            else:
                log.exception("request %s: unexpected error while exporting its KV; it will be recomputed", request_id)
            self._kv_area.remove(request_id)  # never leave an older entry of the same name
        self._kv_area.sweep(time.time())
        self._end_spans(request_id, outcome="handed_off")
        self._engine.abort(request_id)
        del self._requests[request_id]
        self._turn.handed_off_one(request_id)
        self._pending.changed = True
        log.debug("request %s handed off (KV entry %s)", request_id, path)

    def _end_if_over(self, turn: RunningTurn) -> bool:
        reason = turn.end_reason(self._clock())
        if reason is not None:
            self._end_turn(reason)
        return reason is not None

    def _fail_turn(self, error: ErrorInfo) -> None:
        for request_id in list(self._turn.open):
            if request_id in self._requests:
                self._fail(request_id, error)
        self._end_turn("error")

    def _end_turn(self, reason: str, idle_after: bool = True) -> None:
        """Reports the turn. The worker is idle from now on, unless a newer turn replaces it."""
        turn, self._turn = self._turn, None
        self._pending.reports.append(turn.report(self._worker_id, reason, time.time()))
        self._close_turn_span(
            reason,
            prefill_steps=turn.prefill_steps,
            decode_steps=turn.decode_steps,
            switch_s=turn.switch_s,
            requests=len(turn.requests),
        )
        if idle_after:
            self._idle_since = None if reason == "replaced" else self._clock()
        log.debug(
            "turn %d of %s ended (%s): %d prefill + %d decode steps, switch %.4f s",
            turn.turn_id, turn.model, reason, turn.prefill_steps, turn.decode_steps, turn.switch_s,
        )

    def _close_turn_span(self, reason: str, **attributes) -> None:
        span, self._turn_span = self._turn_span, None
        if span is not None:
            span.set_attributes({"reason": reason, **attributes})
            span.end()

    def _end_spans(self, request_id: str, **attributes) -> None:
        self._prefilling.discard(request_id)
        self._spans.end(request_id, **attributes)


def _server_error(e: Exception) -> ErrorInfo:
    # An error during a step is the worker's fault, never the request's (add_request vets those).
    return ErrorInfo(500, "server_error", f"{type(e).__name__}: {e}")
