"""What every handler shares: config, served models, router health, upstream, metrics, admission."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from services.gateway.config import GatewayConfig
from services.gateway.errors import api_error
from services.gateway.gateway_metrics import GatewayMetrics
from services.gateway.health import RouterWatch
from services.gateway.models import ServedModel
from services.gateway.upstream import Upstream


@dataclass
class GatewayCore:
    config: GatewayConfig
    models: dict[str, ServedModel]
    watch: RouterWatch
    upstream: Upstream
    metrics: GatewayMetrics
    clock: Callable[[], float] = time.monotonic
    inflight: int = 0

    @contextmanager
    def admit(self) -> Iterator[None]:
        """Holds one of the gateway's max_inflight slots; a 429 with Retry-After when none is free."""
        if self.inflight >= self.config.max_inflight:
            raise api_error(
                429,
                f"the gateway is serving its limit of {self.config.max_inflight} requests; retry shortly",
                retry_after_s=1,
            )
        self.inflight += 1
        self.metrics.inflight.inc()
        try:
            yield
        finally:
            self.inflight -= 1
            self.metrics.inflight.dec()
