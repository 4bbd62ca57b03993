"""The gateway's side of the bus: submit a GenerateRequest, read its TokenChunks, cancel it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import nats.errors
from nats.aio.client import Client
from nats.js.errors import Error as JetStreamError

from services.gateway.errors import ApiError, api_error
from shared import subjects
from shared.protocol import CancelRequest, ErrorInfo, GenerateRequest, ProtocolError, TokenChunk, decode, encode
from shared.tracing import inject

log = logging.getLogger("tokenpool.gateway.upstream")


class TokenFeed:
    """TokenChunks of one request as they arrive; `finished` once its last chunk was read."""

    def __init__(self, request_id: str, stall_timeout_s: float):
        self.request_id = request_id
        self.stall_timeout_s = stall_timeout_s
        self.finished = False
        self.cancel_reason = "client disconnected"
        """Why the request is cancelled upstream if it ends unfinished; the handler updates it."""
        self._queue: asyncio.Queue[bytes] = asyncio.Queue()

    async def _on_msg(self, msg) -> None:
        self._queue.put_nowait(msg.data)

    async def next_chunk(self) -> TokenChunk:
        """The next chunk; a 504 ApiError when none comes within the stall timeout."""
        while True:
            if self._queue.empty():  # only a wait needs the (costly) timeout
                try:
                    async with asyncio.timeout(self.stall_timeout_s):
                        data = await self._queue.get()
                except TimeoutError:
                    self.cancel_reason = "stalled"
                    raise api_error(
                        504, f"no token arrived for {self.stall_timeout_s:g} s; the request was cancelled"
                    ) from None
            else:
                data = self._queue.get_nowait()
            if (chunk := self._decode(data)) is not None:
                return chunk

    def ready_chunk(self) -> TokenChunk | None:
        """A chunk that has already arrived, without waiting; None when there is none."""
        while not self._queue.empty():
            if (chunk := self._decode(self._queue.get_nowait())) is not None:
                return chunk
        return None

    def _decode(self, data: bytes) -> TokenChunk | None:
        try:
            return decode(data, TokenChunk)
        except ProtocolError as e:
            log.warning("request %s: dropping an unreadable token message: %s", self.request_id, e)
            return None


class Upstream:
    def __init__(self, nc: Client, stall_timeout_s: float, submit_timeout_s: float, on_cancel=None):
        self.nc = nc
        self.js = nc.jetstream()
        self.stall_timeout_s = stall_timeout_s
        self.submit_timeout_s = submit_timeout_s
        self._on_cancel = on_cancel or (lambda reason: None)

    @asynccontextmanager
    async def generate(self, request: GenerateRequest) -> AsyncIterator[TokenFeed]:
        """Subscribes to the request's tokens, then submits it; cancels it upstream if left unfinished."""
        feed = TokenFeed(request.id, self.stall_timeout_s)
        sub = await self.nc.subscribe(request.token_subject, cb=feed._on_msg)
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
            try:
                await sub.unsubscribe()
            except nats.errors.Error as e:
                log.warning("request %s: unsubscribe failed: %s", request.id, e)

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
