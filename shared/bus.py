"""NATS connection and JetStream set-up shared by every service.

Every service connects the same way: to any of several servers (a NATS cluster), with the
credentials and TLS settings of `shared/env.py`, reconnecting forever to whichever node answers.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import ssl
from collections.abc import Callable

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


def refusal(e: Exception, servers: list[str], auth: env.NatsAuth) -> str | None:
    """Why no retry can succeed, for an error of a first connection attempt; None for errors
    worth retrying (no server up yet, a timeout)."""
    where = ", ".join(servers)
    # nats-py reports the server's -ERR 'Authorization Violation' as a plain nats.errors.Error.
    if isinstance(e, nats.errors.AuthorizationError) or "authorization violation" in str(e).lower():
        who = f"user {auth.user!r}" if auth.user else "these credentials" if (auth.creds or auth.nkey_seed) else "a client without credentials"
        return (f"NATS at {where} refused {who} ({e}); check {env.NATS_USER}/{env.NATS_PASSWORD}, "
                f"{env.NATS_CREDS} or {env.NATS_NKEY_SEED}")
    if isinstance(e, ssl.SSLCertVerificationError):
        return f"the TLS certificate of NATS at {where} is not trusted ({e.verify_message}); check {env.NATS_TLS_CA}"
    if isinstance(e, ssl.SSLError):
        return f"TLS with NATS at {where} failed ({e}); check {env.NATS_TLS_CA}, {env.NATS_TLS_CERT} and {env.NATS_TLS_KEY}"
    return None


class NatsConnectError(env.EnvError):
    """NATS refused this service's credentials or TLS settings: retrying cannot help."""


async def connect(urls: str | list[str], name: str, auth: env.NatsAuth | None = None) -> Client:
    """Connects to one of `urls` (comma-separated or a list) and keeps reconnecting forever, to any
    of them or to a node the cluster announces. `auth` defaults to the environment's (env.nats_auth).

    The URLs are tried in the order given, so a host can list its nearest node first.

    Until the first connection it retries as long as no server answers (compose starts services
    before nats is up); refused credentials or an untrusted certificate end it with NatsConnectError.
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
        if not nc.is_connected and not refused.done() and (reason := refusal(e, servers, auth)):
            refused.set_result(reason)
        log.warning("%s: NATS error: %s", name, e)

    connecting = asyncio.ensure_future(
        nc.connect(
            servers=servers,
            name=name,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
            connect_timeout=2,
            allow_reconnect=True,
            dont_randomize=True,
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
    raise NatsConnectError(refused.result())


async def close(nc: Client | None, name: str, timeout_s: float = 5.0) -> None:
    """Drains `nc` (what was published is sent, what was received is handled), but for at most
    `timeout_s`: nats-py's own drain may wait 30 s for a subscription callback that does not
    return, and a stopping service should not. After the bound the connection is just closed."""
    if nc is None or nc.is_closed:
        return
    try:
        await asyncio.wait_for(nc.drain(), timeout_s)
        return
    except TimeoutError:
        log.warning("%s: draining the NATS connection took over %.0f s; closing it", name, timeout_s)
    except Exception as e:  # noqa: BLE001 - e.g. disconnected at the time: closing is all that is left
        log.warning("%s: draining the NATS connection failed (%r); closing it", name, e)
    if not nc.is_closed:
        await nc.close()


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


async def follow_placement(nc: Client, on_value: Callable[[bytes], object], stopping: Callable[[], bool]) -> None:
    """Calls (and awaits, when it is a coroutine function) on_value with the stored placement and with every later one, until cancelled or
    `stopping()`; a failed watch (no JetStream yet, a reconnect) is retried with back-off."""
    backoff = 1.0
    # nats-py can turn a cancellation inside a JetStream call into another error, so the loop
    # also checks `stopping` instead of relying on CancelledError alone.
    while not stopping() and not asyncio.current_task().cancelling():  # a swallowed cancel counts too
        watcher = None
        try:
            kv = await placement_bucket(nc)
            watcher = await kv.watch(subjects.PLACEMENT_KEY)
            backoff = 1.0
            async for entry in watcher:
                if entry is not None and entry.operation is None:
                    result = on_value(entry.value)
                    if inspect.isawaitable(result):
                        await result
        except asyncio.CancelledError:
            raise
        except Exception as e:
            if stopping():
                return
            log.warning("placement watch failed (%s); retrying in %.0f s", e, backoff)
        finally:
            if watcher is not None:
                await asyncio.shield(_stop_watcher(watcher))
        await asyncio.sleep(backoff)
        backoff = min(backoff * 2, 30.0)


async def _stop_watcher(watcher) -> None:
    # nats-py's KV watcher can wait forever on its unsubscribe when stopped mid-update.
    try:
        await asyncio.wait_for(watcher.stop(), 2.0)
    except Exception as e:
        log.debug("placement watcher stop: %s", e)
