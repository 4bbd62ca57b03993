"""The gateway's side of the bus: submit a GenerateRequest, read its TokenChunks, cancel it."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import nats.errors
from nats.aio.client import Client
from nats.js.errors import Error as JetStreamError

from services.gateway.errors import ApiError, api_error
from shared import subjects
from shared.protocol import CancelRequest, ErrorInfo, GenerateRequest, ProtocolError, TokenChunk, encode, token_chunks
from shared.tracing import inject

log = logging.getLogger("tokenpool.gateway.upstream")


class TokenFeed:
    """TokenChunks of one request as they arrive; `finished` once its last chunk was read."""

    def __init__(self, stall_timeout_s: float):
        self.stall_timeout_s = stall_timeout_s
        self.finished = False
        self.cancel_reason = "client disconnected"
        """Why the request is cancelled upstream if it ends unfinished; the handler updates it."""
        self._queue: asyncio.Queue[TokenChunk] = asyncio.Queue()

    def put(self, chunk: TokenChunk) -> None:
        self._queue.put_nowait(chunk)

    async def next_chunk(self) -> TokenChunk:
        """The next chunk; a 504 ApiError when none comes within the stall timeout."""
        if not self._queue.empty():  # only a wait needs the (costly) timeout
            return self._queue.get_nowait()
        try:
            async with asyncio.timeout(self.stall_timeout_s):
                return await self._queue.get()
        except TimeoutError:
            self.cancel_reason = "stalled"
            raise api_error(504, f"no token arrived for {self.stall_timeout_s:g} s; the request was cancelled") from None

    def ready_chunk(self) -> TokenChunk | None:
        """A chunk that has already arrived, without waiting; None when there is none."""
        return None if self._queue.empty() else self._queue.get_nowait()


class Upstream:
    """Submits requests and reads the tokens of all of them on one subject of this gateway's own
    (`inbox`, every request's token_subject): one subscription, and one message per worker flush,
    however many requests are streaming."""

    def __init__(self, nc: Client, stall_timeout_s: float, submit_timeout_s: float, on_cancel=None, gateway_id: str = ""):
        self.nc = nc
        self.js = nc.jetstream()
        self.stall_timeout_s = stall_timeout_s
        self.submit_timeout_s = submit_timeout_s
        self.inbox = subjects.token_inbox(gateway_id or uuid.uuid4().hex[:16])
        self._on_cancel = on_cancel or (lambda reason: None)
        self._feeds: dict[str, TokenFeed] = {}
        self.unreadable = 0
        """Messages on the inbox that were not tokens (dropped)."""

    async def start(self) -> None:
        await self.nc.subscribe(self.inbox, cb=self._on_tokens, pending_msgs_limit=1_000_000, pending_bytes_limit=1 << 30)

    async def _on_tokens(self, msg) -> None:
        try:
            chunks = token_chunks(msg.data)
        except ProtocolError as e:
            self.unreadable += 1
            if self.unreadable in (1, 10, 100) or self.unreadable % 1000 == 0:
                log.warning("dropping an unreadable token message (%d so far): %s", self.unreadable, e)
            return
        for chunk in chunks:
            if (feed := self._feeds.get(chunk.request_id)) is not None:
                feed.put(chunk)  # (a request that has ended takes no more)

    @asynccontextmanager
    async def generate(self, request: GenerateRequest) -> AsyncIterator[TokenFeed]:
        """Submits the request (its token_subject must be `inbox`); cancels it upstream if left unfinished."""
        feed = self._feeds[request.id] = TokenFeed(self.stall_timeout_s)
        try:
            try:
                await self._submit(request)
            except asyncio.CancelledError:
                await self.cancel(request.id, feed.cancel_reason)  # it may have been accepted already
                raise
            try:
                yield feed
            finally:
                if not feed.finished:
                    await self.cancel(request.id, feed.cancel_reason)
        finally:
            del self._feeds[request.id]

    async def _submit(self, request: GenerateRequest) -> None:
        try:
            await self.js.publish(
                subjects.REQUEST_SUBMIT,
                encode(request),
                timeout=self.submit_timeout_s,
                headers=inject({"Nats-Msg-Id": request.id}),
            )
        except (nats.errors.Error, JetStreamError, asyncio.TimeoutError) as e:
            log.warning("request %s: JetStream did not accept it: %r", request.id, e)
            raise api_error(
                503, f"the request queue is unavailable ({type(e).__name__}); retry shortly", retry_after_s=1
            ) from None

    async def cancel(self, request_id: str, reason: str) -> None:
        self._on_cancel(reason)
        try:
            await self.nc.publish(subjects.REQUEST_CANCEL, encode(CancelRequest(request_id, reason)))
        except nats.errors.Error as e:
            log.warning("request %s: could not publish its cancellation: %s", request_id, e)


def error_from_info(info: ErrorInfo) -> ApiError:
    """A worker's or router's error as the HTTP error the client gets."""
    status = info.code if info.code in (400, 404, 429, 500, 503, 504) else 500
    err = api_error(status, info.message, retry_after_s=1 if status in (429, 503) else None)
    if info.type:
        err.type = info.type
    return err
