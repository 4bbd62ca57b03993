"""The engine loop, in the one thread that owns the Engine (the engine is not thread-safe).

    take commands -> pick the model (multiplexer) -> activate it -> engine.step() -> hand outputs over

asyncio talks to it through `submit(command)`; the thread hands each step's TokenChunks
and a state snapshot back through `deliver(Outbox)`, which the service wraps with
loop.call_soon_threadsafe. With no work the thread blocks on its command queue.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from shared.tracing import SpanBook, tracer
from services.gpu_worker import multiplexer
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
    Outbox,
    Place,
    Prefetch,
    Snapshot,
    Stop,
)
from services.gpu_worker.engine.engine import Engine
from services.gpu_worker.engine.errors import EngineError
from services.gpu_worker.engine.residency import Tier
from services.gpu_worker.engine.scheduler import pages_needed
from shared.protocol import AssignRequest, ErrorInfo, TokenChunk

log = logging.getLogger("tokenpool.gpu_worker.engine_thread")


@dataclass
class _Pending:
    chunks: list[tuple[str, TokenChunk]] = field(default_factory=list)
    changed: bool = False


class EngineThread:
    def __init__(
        self,
        make_engine: Callable[[], Engine],
        models: list[str],
        context_lengths: dict[str, int | None],
        worker_id: str,
        min_turn_steps: int,
        deliver: Callable[[Outbox], None],
    ):
        self._make_engine = make_engine
        self._models = list(models)
        self._context_lengths = context_lengths
        self._worker_id = worker_id
        self._min_turn_steps = min_turn_steps
        self._deliver = deliver
        self._commands: queue.SimpleQueue[Command] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="engine", daemon=True)
        self._engine: Engine | None = None
        self._requests: dict[str, Assignment] = {}
        self._spans = SpanBook()
        self._prefilling: set[str] = set()
        self._turn = multiplexer.Turn(None)
        self._ready = False
        self._pending = _Pending()

    def start(self) -> None:
        self._thread.start()

    def submit(self, command: Command) -> None:
        self._commands.put(command)

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
        self._ready = True
        self._pending.changed = True
        self._flush()

    def _loop_once(self) -> bool:
        for command in self._take_commands(block=not self._engine.has_work()):
            if isinstance(command, Stop):
                self._release_all()
                self._flush()
                return False
            self._apply(command)
        if self._engine.has_work():
            self._step()
        self._flush()
        return True

    def _take_commands(self, block: bool) -> list[Command]:
        commands = [self._commands.get()] if block else []
        while True:
            try:
                commands.append(self._commands.get_nowait())
            except queue.Empty:
                return commands

    def _flush(self, fatal: str | None = None) -> None:
        p = self._pending
        if not (p.chunks or p.changed or fatal):
            return
        self._pending = _Pending()
        self._deliver(Outbox(tuple(p.chunks), self._snapshot(), p.changed, fatal))

    def _snapshot(self) -> Snapshot:
        return Snapshot(self._ready, self._engine.stats(), tuple(sorted(self._requests)))

    # ---- commands -------------------------------------------------------------------

    def _apply(self, command: Command) -> None:
        if isinstance(command, Assign):
            self._assign(command.msg, command.headers)
        elif isinstance(command, Cancel):
            self._cancel(command.request_id)
        elif isinstance(command, Prefetch):
            self._prefetch(command.model)
        elif isinstance(command, Place):
            self._place(command.models)

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
            self._engine.add_request(request)
        except Exception as e:
            if not isinstance(e, EngineError):
                log.exception("request %s: unexpected error while adding it", a.request_id)
            self._emit(a, error_chunk(a, error_info(e), self._worker_id))
            return
        self._requests[a.request_id] = a
        self._spans.start(a.request_id, "worker.prefill", headers, model=a.model, resumed_tokens=a.resumed)
        self._prefilling.add(a.request_id)
        self._pending.changed = True
        log.debug("request %s: %s, %d prompt + %d resumed tokens", a.request_id, a.model, a.prompt_tokens, a.resumed)

    def _cancel(self, request_id: str) -> None:
        self._end_spans(request_id, outcome="cancelled")
        self._engine.abort(request_id)
        if self._requests.pop(request_id, None) is not None:
            self._pending.changed = True

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

    def _fail_model(self, model: str, error: ErrorInfo) -> None:
        for request_id in [r for r, a in self._requests.items() if a.model == model]:
            self._fail(request_id, error)

    def _fail(self, request_id: str, error: ErrorInfo) -> None:
        self._end_spans(request_id, outcome="failed", error=error.code)
        self._engine.abort(request_id)
        a = self._requests.pop(request_id)
        self._emit(a, error_chunk(a, error, self._worker_id))

    def _emit(self, a: Assignment, chunk: TokenChunk) -> None:
        self._pending.chunks.append((a.token_subject, chunk))
        self._pending.changed |= chunk.finish_reason is not None or chunk.error is not None

    # ---- one step -------------------------------------------------------------------

    def _step(self) -> None:
        decision = multiplexer.decide(self._engine.models_with_work(), self._turn, self._min_turn_steps)
        model = decision.model
        if model is None:
            return
        try:
            if self._engine.active != model:
                self._switch_to(model)
            self._turn = multiplexer.advance(self._turn, decision)
            if decision.prefetch and self._engine.tier(decision.prefetch) is Tier.HOST:
                self._prefetch(decision.prefetch)  # its copy overlaps this model's steps
            outputs = self._engine.step()
        except Exception as e:
            log.exception("step of model %s failed; failing its requests", model)
            self._turn = multiplexer.Turn(None)
            self._fail_model(model, _server_error(e))
            return
        for out in outputs:
            a = self._requests.get(out.request_id)
            if a is None:
                continue
            self._emit(a, token_chunk(a, out, self._worker_id))
            if out.request_id in self._prefilling:
                self._prefilling.discard(out.request_id)
                parent = self._spans.headers(out.request_id)
                self._spans.end(out.request_id)
                self._spans.start(out.request_id, "worker.decode", parent, model=a.model)
            if out.finish_reason is not None:
                self._end_spans(out.request_id, outcome=out.finish_reason, tokens=a.next_index)
                log.debug("request %s finished (%s) after %d tokens", a.request_id, out.finish_reason, a.next_index)
                del self._requests[out.request_id]

    def _switch_to(self, model: str) -> None:
        previous = self._engine.active
        if previous is not None:
            stats = self._engine.stats()
            if multiplexer.should_swap_out(self._kv_pages(previous), stats.free_pages, self._pages_wanted(model)):
                try:
                    self._engine.swap_out(model=previous)
                except EngineError as e:
                    log.warning("could not park %s's KV in host memory: %s", previous, e)
        with tracer().start_as_current_span("worker.model_switch", attributes={"from": previous or "", "to": model}):
            self._engine.activate(model)
        self._pending.changed = True

    def _end_spans(self, request_id: str, **attributes) -> None:
        self._prefilling.discard(request_id)
        self._spans.end(request_id, **attributes)

    def _sequences(self, model: str):
        for request_id, a in self._requests.items():
            if a.model == model and (seq := self._engine.sequence(request_id)) is not None:
                yield seq

    def _kv_pages(self, model: str) -> int:
        return sum(len(seq.pages) for seq in self._sequences(model))

    def _pages_wanted(self, model: str) -> int:
        """Device pages the model's sequences need to take their next step."""
        block = self._engine.slot(model).block_tokens
        return sum(
            len(seq.host_pages) or max(pages_needed(len(seq.token_ids) + 1, block) - len(seq.pages), 0)
            for seq in self._sequences(model)
        )


def _server_error(e: Exception) -> ErrorInfo:
    # An error during a step is the worker's fault, never the request's (add_request vets those).
    return ErrorInfo(500, "server_error", f"{type(e).__name__}: {e}")
