"""Accepted requests from the JetStream work queue, held unacked until they are finished.

A request's message is acked only when the request completed, failed or was cancelled.
Until then it is touched (in_progress) so JetStream does not redeliver it. If the router
dies, every unacked request is redelivered to the next router on the same durable
consumer once ack_wait has passed since its last touch: no accepted request is lost.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from shared import subjects
from shared.protocol import GenerateRequest, ProtocolError, decode

log = logging.getLogger("tokenpool.router.intake")


class RequestIntake:
    def __init__(self, nc: Client, consumer: str, ack_wait_s: float, max_ack_pending: int, on_malformed: Callable[[], None]):
        self._nc = nc
        self._consumer = consumer
        self._ack_wait_s = ack_wait_s
        self._max_ack_pending = max_ack_pending
        self._on_malformed = on_malformed
        self._held: dict[str, list[Msg]] = {}
        self._sub = None

    async def open(self) -> None:
        js = self._nc.jetstream()
        config = ConsumerConfig(
            name=self._consumer,
            durable_name=self._consumer,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self._ack_wait_s,
            max_ack_pending=self._max_ack_pending,
            deliver_policy=DeliverPolicy.ALL,
            filter_subject=subjects.REQUEST_SUBMIT,
        )
        await js.add_consumer(subjects.REQUEST_STREAM, config)  # creates, or updates the settings
        self._sub = await js.pull_subscribe_bind(durable=self._consumer, stream=subjects.REQUEST_STREAM)

    async def close(self) -> None:
        """Stops pulling. A drain alone would wait for status messages nobody reads any more."""
        if self._sub is not None:
            await self._sub.unsubscribe()
            self._sub = None

    async def fetch(self, batch: int = 64, timeout_s: float = 1.0) -> list[GenerateRequest]:
        """Waits up to timeout_s for new requests; malformed messages are terminated, not returned."""
        try:
            msgs = await self._sub.fetch(batch, timeout=timeout_s)
        except TimeoutError:  # nats.errors.TimeoutError, or a plain one when the deadline ran out between pulls
            return []
        requests = []
        for msg in msgs:
            try:
                request = decode(msg.data, GenerateRequest)
            except ProtocolError as e:
                log.warning("dropping a malformed request message (stream seq %s): %s", _seq(msg), e)
                self._on_malformed()
                await msg.term()
                continue
            self._held.setdefault(request.id, []).append(msg)
            requests.append(request)
        return requests

    def headers(self, request_id: str) -> dict[str, str]:
        msgs = self._held.get(request_id)
        return dict(msgs[0].headers or {}) if msgs else {}

    @property
    def held(self) -> list[str]:
        return list(self._held)

    async def ack(self, request_id: str) -> None:
        for msg in self._held.pop(request_id, []):
            await msg.ack()

    async def nak(self, request_id: str) -> None:
        """Hands the request back to JetStream for immediate redelivery."""
        for msg in self._held.pop(request_id, []):
            await msg.nak()

    async def touch_all(self) -> None:
        for request_id, msgs in list(self._held.items()):
            for msg in msgs:
                try:
                    await msg.in_progress()
                except Exception as e:  # noqa: BLE001 - a lost touch only risks an early redelivery
                    log.warning("could not mark request %s in progress: %s", request_id, e)


def _seq(msg: Msg) -> str:
    try:
        return str(msg.metadata.sequence.stream)
    except Exception:  # noqa: BLE001 - only for the log line
        return "?"
