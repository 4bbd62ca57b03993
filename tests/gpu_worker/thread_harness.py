"""The engine thread with the real engine and no bus: commands in, outboxes read back in order."""

from __future__ import annotations

import math
import queue
import threading
from collections import defaultdict
from collections.abc import Callable

from services.gpu_worker.commands import Assign, Cancel, Outbox, Snapshot, Stop, Turn
from services.gpu_worker.config import WorkerConfig, plan_engine
from services.gpu_worker.engine.engine import Engine
from services.gpu_worker.engine_thread import EngineThread
from shared.catalog import load_catalog
from shared.protocol import AssignRequest, GenerateRequest, RunTurn, Sampling, TokenChunk, TurnReport

from .conftest import CATALOG, MODELS

SHORT = Sampling(max_tokens=8, temperature=0, ignore_eos=True)
ENDLESS = Sampling(max_tokens=4000, temperature=0, ignore_eos=True)


class FakeClock:
    """The thread's clock, moved only by the test (idle_s and quotas become exact)."""

    def __init__(self):
        self.now = 100.0
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self.now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds


def plan(model_store, **overrides):
    config = WorkerConfig(models=MODELS, catalog=CATALOG, **overrides)
    return plan_engine(config, load_catalog(CATALOG, model_store.root))


class Harness:
    def __init__(self, model_store, engine_class: type = Engine, clock=None, kv_area=None, linger_s=0.0, **overrides):
        p = plan(model_store, **overrides)
        self.outboxes: queue.Queue[Outbox] = queue.Queue()
        self.chunks: dict[str, list[TokenChunk]] = defaultdict(list)
        self.reports: list[TurnReport] = []
        self.snapshots: list[Snapshot] = []
        extra = {"clock": clock} if clock is not None else {}
        extra["turn_linger_s"] = linger_s
        if kv_area is not None:
            extra["kv_area"] = kv_area
        make = lambda: engine_class(p.engine, p.paths)  # noqa: E731
        self.thread = EngineThread(make, list(MODELS), p.context_lengths, "w", self.outboxes.put, **extra)
        self.thread.start()
        self.pump(lambda: self.snapshots and self.snapshots[-1].ready, what="the engine to be ready")

    def __enter__(self) -> Harness:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        self.thread.submit(Stop())
        assert self.thread.join(30), "the engine thread did not stop"
        self.drain()

    # ---- commands -------------------------------------------------------------------

    def assign(self, request_id: str, model: str, prompt, sampling: Sampling = SHORT, resume=(), kv_handoff="") -> None:
        request = GenerateRequest(request_id, model, tuple(prompt), sampling, f"tp.tokens.{request_id}")
        self.thread.submit(Assign(AssignRequest(request, tuple(resume), kv_handoff)))

    def turn(self, turn_id: int, model: str, request_ids, quota_s: float = math.inf, **kw) -> None:
        self.thread.submit(Turn(RunTurn(turn_id, model, tuple(request_ids), quota_s, **kw)))

    def cancel(self, request_id: str) -> None:
        self.thread.submit(Cancel(request_id))

    # ---- what comes back ------------------------------------------------------------

    def _take(self, outbox: Outbox) -> None:
        assert outbox.fatal is None, outbox.fatal
        for _, chunk in outbox.chunks:
            self.chunks[chunk.request_id].append(chunk)
        self.reports += outbox.reports
        if outbox.snapshot is not None:
            self.snapshots.append(outbox.snapshot)

    def drain(self) -> None:
        while True:
            try:
                self._take(self.outboxes.get_nowait())
            except queue.Empty:
                return

    def pump(self, condition: Callable[[], object], timeout: float = 60.0, what: str = "condition"):
        while not (result := condition()):
            try:
                self._take(self.outboxes.get(timeout=timeout))
            except queue.Empty:
                raise AssertionError(f"timed out waiting for {what}") from None
        return result

    def report(self, turn_id: int) -> TurnReport:
        return self.pump(lambda: next((r for r in self.reports if r.turn_id == turn_id), None), what=f"turn {turn_id}")

    def finished(self, request_id: str) -> list[TokenChunk]:
        def done():
            c = self.chunks.get(request_id)
            return c if c and (c[-1].finish_reason or c[-1].error) else None

        return self.pump(done, what=f"the end of {request_id}")

    def tokens(self, request_id: str) -> list[int]:
        return [t for c in self.chunks.get(request_id, []) for t in c.token_ids]
