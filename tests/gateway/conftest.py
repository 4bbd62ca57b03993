"""A real nats-server, real gateways on free ports, and an echo worker that stands in for router + workers."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from dataclasses import replace
from pathlib import Path

import openai
import pytest
import pytest_asyncio

from services.gateway import Gateway, GatewayConfig
from shared import bus, subjects
from shared.nats_server import NatsServer
from shared.protocol import (
    CancelRequest, ErrorInfo, GenerateRequest, RouterState, TokenBatch, TokenChunk, Usage, decode, encode,
)
from shared.tokenizer import Tokenizer

SMOL = "smollm2-135m-instruct"
LLAMA = "demo-llama"
LLAMA_CONTEXT = 64
"""The catalog caps demo-llama's window to this many tokens, to test the context check."""

MODULE = dict(scope="module", loop_scope="module")


@pytest.fixture(scope="module")
def nats_server(tmp_path_factory):
    server = NatsServer(tmp_path_factory.mktemp("nats")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def catalog_path(tmp_path_factory, model_store) -> Path:
    path = tmp_path_factory.mktemp("catalog") / "catalog.toml"
    path.write_text(
        f'[[models]]\nname = "{SMOL}"\npath = "{model_store.path(SMOL)}"\n\n'
        f'[[models]]\nname = "{LLAMA}"\npath = "{model_store.path(LLAMA)}"\ncontext_length = {LLAMA_CONTEXT}\n'
    )
    return path


@pytest.fixture(scope="module")
def tokenizer(model_store) -> Tokenizer:
    return Tokenizer(model_store.path(SMOL))


@pytest.fixture(scope="module")
def base_config(nats_server, catalog_path, model_store) -> GatewayConfig:
    return GatewayConfig(port=0, nats=nats_server.url, catalog=catalog_path, model_store=model_store.root,
                         stall_timeout_s=10.0)


@contextlib.asynccontextmanager
async def running_gateway(config: GatewayConfig):
    async with Gateway(config) as gw:
        gw.base_url = f"http://127.0.0.1:{gw.port}"
        yield gw


@pytest_asyncio.fixture(**MODULE)
async def nc(nats_server):
    client = await bus.connect(nats_server.url, "test")
    yield client
    await client.close()


@pytest_asyncio.fixture(**MODULE)
async def gateway(base_config):
    async with running_gateway(base_config) as gw:
        yield gw


@pytest.fixture(scope="module")
def make_gateway(base_config):
    """`async with make_gateway(stall_timeout_s=0.5) as gw:` a further gateway with other settings."""
    return lambda **overrides: running_gateway(replace(base_config, **overrides))


def router_state(ready: bool = True, workers: tuple[str, ...] = ("echo-worker",)) -> RouterState:
    return RouterState("test-router", ready, workers, (), 0, time.time())


@pytest_asyncio.fixture(**MODULE)
async def router(nc):
    """Publishes a ready RouterState with one worker every 0.3 s, as a live router does."""

    async def beat():
        while True:
            await nc.publish(subjects.ROUTER_STATE, encode(router_state()))
            await asyncio.sleep(0.3)

    task = asyncio.create_task(beat())
    await nc.publish(subjects.ROUTER_STATE, encode(router_state()))
    await nc.flush()
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


class EchoWorker:
    """Consumes REQUEST_SUBMIT and answers each request on its token subject.

    By default it echoes the prompt (chat: the last user message) up to max_tokens, in
    chunks sent out of order, with duplicates and an overlap. Markers in the text pick
    other behaviour: [429] rejects like a full router queue, [stall] never answers,
    [slow] sends a token every 0.1 s until cancelled, [fail-mid] fails after two tokens,
    [batched] sends unreadable bytes, then a TokenBatch holding a chunk of a request the gateway
    does not know and every chunk of this one (as a worker's flush does). Of a request's choices
    (ids ending -0, -1, ...), [fail-one-now] fails choice 1 at once and never answers the others;
    [fail-one-late] fails choice 1 after 0.3 s while the others go on as [slow]. With top_logprobs
    k, each token t comes with (t, -0.5), (t + 1, -1.5), ... k alternatives.
    """

    def __init__(self, nc, tokenizer: Tokenizer):
        self.nc, self.tok = nc, tokenizer
        self.requests: dict[str, GenerateRequest] = {}
        self.cancels: list[CancelRequest] = []
        self._tasks: set[asyncio.Task] = set()

    async def start(self) -> EchoWorker:
        await bus.ensure_request_stream(self.nc)
        js = self.nc.jetstream()
        self._pull = await js.pull_subscribe(subjects.REQUEST_SUBMIT, durable="echo", stream=subjects.REQUEST_STREAM)
        self._cancel_sub = await self.nc.subscribe(subjects.REQUEST_CANCEL, cb=self._on_cancel)
        self._loop = asyncio.create_task(self._consume())
        return self

    async def stop(self) -> None:
        for task in (self._loop, *self._tasks):
            task.cancel()
        await asyncio.gather(self._loop, *self._tasks, return_exceptions=True)
        await self._cancel_sub.unsubscribe()

    async def _on_cancel(self, msg) -> None:
        self.cancels.append(decode(msg.data, CancelRequest))

    def cancelled(self, request_id: str) -> CancelRequest | None:
        return next((c for c in self.cancels if c.request_id == request_id), None)

    def find(self, marker: str) -> GenerateRequest | None:
        return next(iter(self.find_all(marker)), None)

    def find_all(self, marker: str) -> list[GenerateRequest]:
        return [r for r in self.requests.values() if marker in self.tok.decode(list(r.prompt_token_ids))]

    async def _consume(self) -> None:
        while True:
            try:
                msgs = await self._pull.fetch(16, timeout=0.5)
            except TimeoutError:  # nats-py raises a plain one too when the deadline runs out between pulls
                continue
            for msg in msgs:
                await msg.ack()
                request = decode(msg.data, GenerateRequest)
                self.requests[request.id] = request
                task = asyncio.create_task(self._answer(request))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _send(self, request: GenerateRequest, chunk: TokenChunk) -> None:
        await self.nc.publish(request.token_subject, encode(chunk))

    async def _answer(self, request: GenerateRequest) -> None:
        text = self.tok.decode(list(request.prompt_token_ids), skip_special_tokens=False)
        rid, n_prompt = request.id, len(request.prompt_token_ids)
        if "[429]" in text:
            return await self._send(request, TokenChunk(rid, 0, error=ErrorInfo(429, "rate_limit_error", "queue full")))
        if "[fail-one-" in text and rid.endswith("-1"):
            if "[fail-one-late]" in text:
                await asyncio.sleep(0.3)
            return await self._send(request, TokenChunk(rid, 0, error=ErrorInfo(500, "server_error", "choice 1 failed")))
        if "[stall]" in text or "[fail-one-now]" in text:
            return
        if "[slow]" in text or "[fail-one-late]" in text:
            for i in range(600):
                if self.cancelled(rid):
                    return
                await self._send(request, TokenChunk(rid, i, (self.tok.encode(" tick", False)[0],), worker_id="echo"))
                await asyncio.sleep(0.1)
            return
        ids = self._reply_ids(request, text)
        if "[fail-mid]" in text:
            await self._send(request, TokenChunk(rid, 0, tuple(ids[:2])))
            return await self._send(request, TokenChunk(rid, 2, error=ErrorInfo(500, "server_error", "worker lost its GPU")))
        ids = ids[: request.sampling.max_tokens]
        reason = "length" if len(ids) == request.sampling.max_tokens else "stop"
        logprob = -0.5 if request.sampling.logprobs else None
        k = request.sampling.top_logprobs
        chunks = [
            TokenChunk(rid, i, tuple(ids[i : i + 2]), (logprob,) * len(ids[i : i + 2]) if logprob else None,
                       top_logprobs=tuple(_alternatives(t, k) for t in ids[i : i + 2]) if k else None)
            for i in range(0, len(ids), 2)
        ]
        chunks[-1] = replace(chunks[-1], finish_reason=reason, usage=Usage(n_prompt, len(ids)))
        if "[batched]" in text:
            await self.nc.publish(request.token_subject, b"\x00 not a token message")
            stranger = TokenChunk("cmpl-unknown", 0, (ids[0],), finish_reason="length", usage=Usage(1, 1))
            return await self.nc.publish(request.token_subject, encode(TokenBatch((stranger, *chunks))))
        for chunk in _scrambled(chunks):
            await self._send(request, chunk)

    def _reply_ids(self, request: GenerateRequest, text: str) -> list[int]:
        users = re.findall(r"<\|im_start\|>user\n(.*?)<\|im_end\|>", text, re.S)
        if users:
            return self.tok.encode(users[-1], add_special_tokens=False)
        return list(request.prompt_token_ids)


def _alternatives(token_id: int, k: int) -> tuple[tuple[int, float], ...]:
    return tuple((token_id + i, -0.5 - i) for i in range(k))


def _scrambled(chunks: list[TokenChunk]) -> list[TokenChunk]:
    """Adjacent chunks swapped, the first repeated, one chunk overlapping its neighbours, a late duplicate."""
    out = []
    for i in range(0, len(chunks), 2):
        out += chunks[i : i + 2][::-1]
    if len(chunks) > 2:
        first, second = chunks[0], chunks[1]
        overlap = TokenChunk(first.request_id, first.index + 1, first.token_ids[1:] + second.token_ids[:1],
                             None if first.logprobs is None else first.logprobs[1:] + second.logprobs[:1],
                             top_logprobs=None if first.top_logprobs is None
                             else first.top_logprobs[1:] + second.top_logprobs[:1])
        out.insert(2, first)
        out.insert(3, overlap)
    return out + [chunks[0]]


@pytest_asyncio.fixture(**MODULE)
async def echo_worker(nc, tokenizer):
    worker = await EchoWorker(nc, tokenizer).start()
    yield worker
    await worker.stop()


async def wait_ready(gw) -> None:
    """Until the gateway has heard a ready RouterState (a fresh gateway waits for the next beat)."""
    await eventually(lambda: gw.core.watch.check(gw.core.clock()).ok)


async def eventually(predicate, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (value := predicate()):
            return value
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met in time")


@pytest_asyncio.fixture(**MODULE)
async def client(gateway, router, echo_worker):
    """The official openai client on the gateway, once it is ready (router and echo worker up)."""
    await wait_ready(gateway)
    c = openai.AsyncOpenAI(base_url=gateway.base_url + "/v1", api_key="unused", max_retries=0, timeout=30)
    yield c
    await c.close()
