"""The router's Prometheus endpoint: GET /metrics on its own small HTTP server."""

from __future__ import annotations

from aiohttp import web

from shared.metrics import CONTENT_TYPE, Registry


class MetricsServer:
    def __init__(self, registry: Registry, host: str, port: int):
        self._registry = registry
        self._host, self._port = host, port
        self._runner: web.AppRunner | None = None
        self.url: str | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # the real one when 0 asked for a free port
        self.url = f"http://{self._host}:{port}/metrics"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self._registry.render().encode(), headers={"Content-Type": CONTENT_TYPE})
