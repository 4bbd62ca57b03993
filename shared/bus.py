"""NATS connection and JetStream set-up shared by every service.

Every service connects the same way: to any of several servers (a NATS cluster), with the
credentials and TLS settings of `shared/env.py`, reconnecting forever to whichever node answers.
"""

from __future__ import annotations

import asyncio
import logging
import ssl

import nats.errors
from nats.aio.client import Client
from nats.js.api import KeyValueConfig, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError

from shared import env, subjects

log = logging.getLogger(__name__)


def split_servers(urls: str | list[str]) -> list[str]:
    """The server URLs of `urls` (comma-separated or a list); env.EnvError when there is none."""
    parts = urls.split(",") if isinstance(urls, str) else urls
    servers = [u.strip() for u in parts if u.strip()]
    if not servers:
        raise env.EnvError(f"no NATS server URL given; set {env.NATS_URL} or --nats, e.g. nats://127.0.0.1:4222")
    return servers


def auth_options(auth: env.NatsAuth) -> dict:
    """nats.connect keyword arguments for `auth`, without the TLS context."""
    options: dict = {}
    if auth.user:
        options.update(user=auth.user, password=auth.password)
    if auth.creds:
        options["user_credentials"] = str(auth.creds)
    if auth.nkey_seed:
        options["nkeys_seed"] = str(auth.nkey_seed)
    return options


def tls_context(auth: env.NatsAuth) -> ssl.SSLContext | None:
    if not auth.tls:
        return None
    context = ssl.create_default_context(cafile=str(auth.tls_ca) if auth.tls_ca else None)
    if auth.tls_cert:
        context.load_cert_chain(str(auth.tls_cert), str(auth.tls_key))
    return context


def _is_auth_refusal(e: Exception) -> bool:
    # nats-py reports the server's -ERR 'Authorization Violation' as a plain nats.errors.Error.
    return isinstance(e, nats.errors.AuthorizationError) or "authorization violation" in str(e).lower()


class NatsAuthError(env.EnvError):
    """The NATS server refused this service's credentials (or it offered none where they are needed)."""


async def connect(urls: str | list[str], name: str, auth: env.NatsAuth | None = None) -> Client:
    """Connects to one of `urls` (comma-separated or a list) and keeps reconnecting forever, to any
    of them or to a node the cluster announces. `auth` defaults to the environment's (env.nats_auth).

    Until the first connection it retries as long as no server answers (compose starts services
    before nats is up); a server that refuses the credentials ends it with NatsAuthError.
    """
    servers = split_servers(urls)
    auth = env.nats_auth() if auth is None else auth
    nc = Client()
    refused: asyncio.Future = asyncio.get_running_loop().create_future()

    async def on_disconnect():
        log.warning("%s: disconnected from NATS", name)

    async def on_reconnect():
        log.info("%s: reconnected to NATS at %s", name, nc.connected_url.netloc if nc.connected_url else "?")

    async def on_error(e):
        if _is_auth_refusal(e) and not nc.is_connected and not refused.done():
            refused.set_result(e)
        log.warning("%s: NATS error: %s", name, e)

    connecting = asyncio.ensure_future(
        nc.connect(
            servers=servers,
            name=name,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
            connect_timeout=2,
            allow_reconnect=True,
            disconnected_cb=on_disconnect,
            reconnected_cb=on_reconnect,
            error_cb=on_error,
            tls=tls_context(auth),
            **auth_options(auth),
        )
    )
    await asyncio.wait([connecting, refused], return_when=asyncio.FIRST_COMPLETED)
    if connecting.done():
        refused.cancel()
        connecting.result()
        return nc
    connecting.cancel()
    await asyncio.gather(connecting, return_exceptions=True)
    await nc.close()
    who = f"user {auth.user!r}" if auth.user else "these credentials" if (auth.creds or auth.nkey_seed) else "a client without credentials"
    raise NatsAuthError(
        f"NATS at {', '.join(servers)} refused {who} ({refused.result()}); check {env.NATS_USER}/{env.NATS_PASSWORD}, "
        f"{env.NATS_CREDS} or {env.NATS_NKEY_SEED}"
    )


async def ensure_request_stream(nc: Client) -> None:
    """The work-queue stream holding accepted requests until the router acks them."""
    js = nc.jetstream()
    config = StreamConfig(
        name=subjects.REQUEST_STREAM,
        subjects=[subjects.REQUEST_SUBMIT],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        num_replicas=env.nats_replicas(),
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
        return await js.create_key_value(KeyValueConfig(bucket=subjects.PLACEMENT_BUCKET, history=5, replicas=env.nats_replicas()))
