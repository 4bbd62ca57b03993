"""A real nats-server, the real engine on the demo models, and a client that reads the bus like the router."""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from services.gpu_worker.config import WorkerConfig
from services.gpu_worker.service import GpuWorker
from shared import bus, subjects
from shared.nats_server import NatsServer
from shared.protocol import (
    AssignRequest,
    CancelAssignment,
    GenerateRequest,
    RunTurn,
    Sampling,
    TokenChunk,
    TurnReport,
    WorkerState,
    decode,
    encode,
    token_chunks,
)
from shared.tokenizer import Tokenizer

CATALOG = Path(__file__).resolve().parents[2] / "deploy" / "catalog.toml"
MODELS = ("demo-llama", "demo-qwen2")
PROMPT = "The capital of France is"
GREEDY = Sampling(max_tokens=24, temperature=0, ignore_eos=True)
_TURN_IDS = itertools.count(1)


@pytest.fixture(scope="module")
def nats_url(tmp_path_factory, model_store) -> str:
    with NatsServer(tmp_path_factory.mktemp("nats")) as server:
        yield server.url


@pytest.fixture(scope="session")
def prompt_ids(model_store) -> tuple[int, ...]:
    # The demo models share SmolLM2's tokenizer.
    return tuple(Tokenizer(model_store.path("demo-llama")).encode(PROMPT))


def worker_config(nats_url: str, worker_id: str, **overrides) -> WorkerConfig:
    values = dict(worker_id=worker_id, nats=nats_url, catalog=CATALOG, models=MODELS, report_interval_s=0.2)
    return WorkerConfig(**(values | overrides))


@asynccontextmanager
async def running_worker(config: WorkerConfig):
    async with GpuWorker(config) as worker:
        task = asyncio.create_task(worker.run())
        try:
            yield worker
        finally:
            worker.stop()
            await task


class BusClient:
    """Sends commands to a worker like the router and records what comes back, in arrival order."""

    def __init__(self, nc):
        self.nc = nc
        self.arrivals: list[TokenChunk] = []
        self.states: list[WorkerState] = []
        self.reports: list[TurnReport] = []
        self._changed = asyncio.Event()

    @classmethod
    async def connect(cls, url: str) -> BusClient:
        client = cls(await bus.connect(url, "test-client"))
        await client.nc.subscribe(subjects.TOKENS_ALL, cb=client._on_chunk)
        await client.nc.subscribe(subjects.WORKER_STATE, cb=client._on_state)
        await client.nc.subscribe(subjects.TURN_REPORTS, cb=client._on_report)
        return client

    async def _on_chunk(self, msg):
        self.arrivals.extend(token_chunks(msg.data))
        self._changed.set()

    async def _on_state(self, msg):
        self.states.append(decode(msg.data, WorkerState))
        self._changed.set()

    async def _on_report(self, msg):
        self.reports.append(decode(msg.data, TurnReport))
        self._changed.set()

    async def assign(self, worker_id, request_id, model, prompt, sampling=GREEDY, resume=(), kv_handoff=""):
        request = GenerateRequest(request_id, model, tuple(prompt), sampling, subjects.tokens(request_id))
        msg = AssignRequest(request, tuple(resume), kv_handoff)
        await self.nc.publish(subjects.worker_commands(worker_id), encode(msg))

    async def run_turn(self, worker_id, model, request_ids, quota_s=math.inf, **kw) -> int:
        """Sends a RunTurn with a fresh id (ids are unique across this test session); returns the id."""
        turn_id = next(_TURN_IDS)
        turn = RunTurn(turn_id, model, tuple(request_ids), quota_s, **kw)
        await self.nc.publish(subjects.worker_commands(worker_id), encode(turn))
        return turn_id

    async def turn(self, worker_id, model, request_ids, quota_s=math.inf, **kw) -> TurnReport:
        """Runs one turn and waits for its report."""
        return await self.report(await self.run_turn(worker_id, model, request_ids, quota_s, **kw))

    async def report(self, turn_id, timeout: float = 30.0) -> TurnReport:
        found = lambda: next((r for r in self.reports if r.turn_id == turn_id), None)  # noqa: E731
        return await self.until(found, timeout, f"the report of turn {turn_id}")

    async def cancel(self, worker_id, request_id):
        await self.nc.publish(subjects.worker_commands(worker_id), encode(CancelAssignment(request_id)))

    def chunks(self, request_id) -> list[TokenChunk]:
        return [c for c in self.arrivals if c.request_id == request_id]

    async def until(self, condition: Callable[[], object], timeout: float = 30.0, what: str = "condition"):
        deadline = time.monotonic() + timeout
        while not (result := condition()):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"timed out waiting for {what}")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                pass
        return result

    async def finished(self, request_id, timeout: float = 30.0) -> list[TokenChunk]:
        def done():
            chunks = self.chunks(request_id)
            return chunks if chunks and (chunks[-1].finish_reason or chunks[-1].error) else None

        return await self.until(done, timeout, f"the end of {request_id}")

    async def state(self, worker_id, condition: Callable[[WorkerState], bool], timeout: float = 30.0) -> WorkerState:
        start = len(self.states)

        def found():
            return next((s for s in self.states[start:] if s.worker_id == worker_id and condition(s)), None)

        return await self.until(found, timeout, f"a WorkerState of {worker_id} matching the condition")

    async def close(self):
        await self.nc.drain()


async def take_turns(client: BusClient, worker_id: str, requests: dict[str, list[str]], quota_s: float = 0.0, park: bool = True):
    """A minimal router: one turn per model with unfinished requests, round robin, until all end.
    With `park`, each turn parks the other models' requests in host memory. Returns the reports."""
    reports = []

    def unfinished(ids):
        return [r for r in ids if not ((c := client.chunks(r)) and (c[-1].finish_reason or c[-1].error))]

    while any(unfinished(ids) for ids in requests.values()):
        for model, ids in requests.items():
            if not unfinished(ids):
                continue
            others = tuple(r for m, rs in requests.items() if m != model for r in unfinished(rs)) if park else ()
            reports.append(await client.turn(worker_id, model, unfinished(ids), quota_s, park=others))
    return reports


def token_ids(chunks: list[TokenChunk]) -> list[int]:
    return [t for c in chunks for t in c.token_ids]


def token_indexes(chunks: list[TokenChunk]) -> list[int]:
    """The output index of every token the chunks carry. Tokens that queued while the worker's
    publisher was busy travel as one multi-token chunk, so a chunk's index is its first token's."""
    return [i for c in chunks for i in range(c.index, c.index + len(c.token_ids))]
