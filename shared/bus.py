"""NATS connection and JetStream set-up shared by every service."""

from __future__ import annotations

import logging

import nats
from nats.aio.client import Client
from nats.js.api import KeyValueConfig, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError

from shared import subjects

log = logging.getLogger(__name__)


async def connect(urls: str | list[str], name: str) -> Client:
    """Connects to one of `urls` (comma-separated or a list) and keeps reconnecting forever."""
    servers = [u.strip() for u in urls.split(",")] if isinstance(urls, str) else list(urls)

    async def on_disconnect():
        log.warning("%s: disconnected from NATS", name)

    async def on_reconnect():
        log.info("%s: reconnected to NATS at %s", name, nc.connected_url.netloc if nc.connected_url else "?")

    async def on_error(e):
        log.warning("%s: NATS error: %s", name, e)

    nc = await nats.connect(
        servers=servers,
        name=name,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        connect_timeout=2,
        allow_reconnect=True,
        disconnected_cb=on_disconnect,
        reconnected_cb=on_reconnect,
        error_cb=on_error,
    )
    return nc


async def ensure_request_stream(nc: Client) -> None:
    """The work-queue stream holding accepted requests until the router acks them."""
    js = nc.jetstream()
    config = StreamConfig(
        name=subjects.REQUEST_STREAM,
        subjects=[subjects.REQUEST_SUBMIT],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
    )
    try:
        await js.add_stream(config)
    except BadRequestError:
        await js.update_stream(config)


async def placement_bucket(nc: Client):
    js = nc.jetstream()
    try:
        return await js.key_value(subjects.PLACEMENT_BUCKET)
    except Exception:
        return await js.create_key_value(KeyValueConfig(bucket=subjects.PLACEMENT_BUCKET, history=5))
