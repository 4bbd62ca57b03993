"""The gateway service: `async with Gateway(config) as gw: await gw.serve_forever()`."""

from __future__ import annotations

import asyncio
import logging
import signal
import time

from aiohttp import web

from services.gateway.app import build_app
from services.gateway.config import GatewayConfig
from services.gateway.core import GatewayCore
from services.gateway.gateway_metrics import GatewayMetrics
from services.gateway.health import RouterWatch
from services.gateway.models import load_models
from services.gateway.upstream import Upstream
from shared import bus, subjects
from shared.catalog import load_catalog
from shared.protocol import ProtocolError, RouterState, decode

log = logging.getLogger("tokenpool.gateway")


class Gateway:
    def __init__(self, config: GatewayConfig):
        self.config = config
        self.core: GatewayCore | None = None
        self.port: int | None = None
        """The bound port (differs from config.port when that is 0)."""
        self._nc = None
        self._runner: web.AppRunner | None = None
        self._stop = asyncio.Event()
        self._bad_router_messages = 0

    async def __aenter__(self) -> Gateway:
        c = self.config
        catalog = load_catalog(c.catalog, c.model_store)
        models = await asyncio.to_thread(load_models, catalog)
        self._nc = await bus.connect(c.nats, "gateway")
        try:
            await self._start(models)
        except BaseException:
            await self._close()
            raise
        log.info("gateway serving %s on http://%s:%d", ", ".join(models), c.host, self.port)
        return self

    async def _start(self, models) -> None:
        c = self.config
        try:
            await bus.ensure_request_stream(self._nc)
        except Exception as e:  # the router creates it too; requests get 503 until one of us succeeds
            log.warning("could not create the request stream %s: %r", subjects.REQUEST_STREAM, e)
        metrics = GatewayMetrics()
        watch = RouterWatch(c.router_stale_s)
        upstream = Upstream(
            self._nc, c.stall_timeout_s, c.submit_timeout_s, on_cancel=lambda reason: metrics.cancelled.inc(reason=reason)
        )
        self.core = GatewayCore(c, models, watch, upstream, metrics)
        await upstream.start()
        await self._nc.subscribe(subjects.ROUTER_STATE, cb=self._on_router_state)
        self._runner = web.AppRunner(
            build_app(self.core), handler_cancellation=True, shutdown_timeout=c.drain_timeout_s, access_log=None
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, c.host, c.port)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def _on_router_state(self, msg) -> None:
        try:
            state = decode(msg.data, RouterState)
        except ProtocolError as e:
            self._bad_router_messages += 1
            if self._bad_router_messages in (1, 10, 100) or self._bad_router_messages % 1000 == 0:
                log.warning("ignoring unreadable RouterState (%d so far): %s", self._bad_router_messages, e)
            return
        self.core.watch.observe(state, self.core.clock())

    async def serve_forever(self) -> None:
        """Serves until stop() or SIGTERM/SIGINT."""
        loop = asyncio.get_running_loop()
        installed = []
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, self.stop)
                installed.append(sig)
            except (NotImplementedError, RuntimeError):
                pass  # not the main thread: stop() is the way out
        try:
            await self._stop.wait()
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)

    def stop(self) -> None:
        self._stop.set()

    async def __aexit__(self, *exc) -> None:
        await self._close()

    async def _close(self) -> None:
        started = time.monotonic()
        if self._runner is not None:
            await self._runner.cleanup()  # stops listening, lets open requests finish (drain_timeout_s)
            self._runner = None
        await bus.close(self._nc, "gateway")
        log.info("gateway stopped in %.1f s", time.monotonic() - started)
