"""A stand-in gpu_worker on a real bus: takes commands, reports its state, emits tokens on cue."""

from __future__ import annotations

import asyncio
import time

from shared import subjects
from shared.protocol import (
    AssignRequest,
    CancelAssignment,
    GenerateRequest,
    RunTurn,
    ModelResidency,
    Sampling,
    TokenChunk,
    Usage,
    WorkerState,
    decode,
    encode,
    token_chunks,
)


class FakeWorker:
    def __init__(self, nc, worker_id: str, serving: tuple[str, ...], interval_s: float = 0.2):
        self.nc, self.worker_id, self.serving, self.interval_s = nc, worker_id, serving, interval_s
        self.assigns: list[AssignRequest] = []
        self.cancels: list[str] = []
        self.holding: dict[str, AssignRequest] = {}
        self.next_index: dict[str, int] = {}
        self.reporting = True
        self.turns: list[RunTurn] = []
        self._seq = 0
        self._sub = None
        self._task: asyncio.Task | None = None

    async def __aenter__(self) -> FakeWorker:
        self._sub = await self.nc.subscribe(subjects.worker_commands(self.worker_id), cb=self._on_command)
        await self.report()
        self._task = asyncio.create_task(self._report_loop())
        return self

    async def __aexit__(self, *exc) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        await self._sub.unsubscribe()

    async def _on_command(self, msg) -> None:
        command = decode(msg.data, AssignRequest, CancelAssignment, RunTurn)
        if isinstance(command, RunTurn):
            self.turns.append(command)  # tokens come on the test's cue, whatever the turn
        elif isinstance(command, AssignRequest):
            self.assigns.append(command)
            self.holding[command.request.id] = command
            self.next_index[command.request.id] = len(command.resume_token_ids)
        else:
            self.cancels.append(command.request_id)
            self.holding.pop(command.request_id, None)

    async def _report_loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            if self.reporting:
                await self.report()

    async def report(self) -> None:
        self._seq += 1
        models = tuple(ModelResidency(m, "host") for m in self.serving)
        state = WorkerState(
            self.worker_id, True, self.serving, models, None, tuple(self.holding), 64, 64, "cpu", self._seq, time.time()
        )
        await self.nc.publish(subjects.WORKER_STATE, encode(state))

    async def emit(self, request_id: str, n: int, finish: str | None = None) -> None:
        """Publishes the request's next n tokens (token id = index), as the real worker would."""
        assign = self.holding[request_id]
        start = self.next_index[request_id]
        ids = tuple(range(start, start + n))
        usage = Usage(len(assign.request.prompt_token_ids), start + n) if finish else None
        chunk = TokenChunk(request_id, start, ids, finish_reason=finish, usage=usage, worker_id=self.worker_id)
        self.next_index[request_id] = start + n
        if finish:
            del self.holding[request_id]
        await self.nc.publish(assign.request.token_subject, encode(chunk))


def make_request(rid: str, model: str, max_tokens: int = 8) -> GenerateRequest:
    return GenerateRequest(rid, model, (1, 2, 3), Sampling(max_tokens=max_tokens), subjects.tokens(rid), created_at=time.time())


class Client:
    """Submits requests the way the gateway does and collects their token chunks."""

    def __init__(self, nc):
        self.nc, self.js = nc, nc.jetstream()
        self.chunks: dict[str, list[TokenChunk]] = {}

    async def submit(self, request: GenerateRequest) -> None:
        self.chunks[request.id] = []

        async def on_chunk(msg) -> None:
            self.chunks[request.id].extend(token_chunks(msg.data))

        await self.nc.subscribe(request.token_subject, cb=on_chunk)
        await self.nc.flush()
        await self.js.publish(subjects.REQUEST_SUBMIT, encode(request), headers={"Nats-Msg-Id": request.id})

    def finished(self, request_id: str) -> bool:
        return any(c.finish_reason or c.error for c in self.chunks.get(request_id, []))


async def eventually(predicate, timeout_s: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.02)
