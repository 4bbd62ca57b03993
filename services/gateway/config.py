"""The gateway's configuration: one dataclass, parsed once from flags and environment."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

from shared import env

MIB = 1 << 20


@dataclass(frozen=True)
class GatewayConfig:
    host: str = "127.0.0.1"
    """Address the HTTP server listens on."""
    port: int = 8000
    """HTTP port; 0 picks a free one (see Gateway.port)."""
    nats: str = "nats://127.0.0.1:4222"
    """NATS server URL(s), comma-separated."""
    catalog: Path = Path("deploy/catalog.toml")
    """The model catalog (TOML): the models served, their context caps and SLO classes."""
    model_store: Path = field(default_factory=env.model_store)
    """Root of the model store; catalog paths are relative to it. Tokenizers are read from there."""
    max_body_bytes: int = 1 * MIB
    """Largest request body accepted; larger ones get 413."""
    max_inflight: int = 512
    """HTTP requests this gateway serves at once; more get 429 with Retry-After. One request with
    n choices (or several prompts) counts once here; upstream, each choice is a request, and the
    router's queues (max_queue_per_model) bound those."""
    stall_timeout_s: float = 120.0
    """A request that receives no token for this long fails with 504 (and is cancelled upstream)."""
    router_stale_s: float = 3.0
    """A router whose last RouterState is older than this counts as gone: /health and requests get 503."""
    submit_timeout_s: float = 5.0
    """How long JetStream may take to accept a request before the gateway answers 503."""
    drain_timeout_s: float = 10.0
    """On SIGTERM, how long open requests may run before their connections are closed."""

    def __post_init__(self):
        if not self.nats.strip():
            raise ValueError("nats URL is empty; pass --nats nats://HOST:4222 or set TOKENPOOL_NATS_URL")
        if not 0 <= self.port < 65536:
            raise ValueError(f"port {self.port} is not a TCP port; pass --port between 1 and 65535 (0 picks a free one)")
        if self.max_body_bytes < 1024:
            raise ValueError(f"max_body_bytes={self.max_body_bytes} is too small for any request; use at least 1024")
        if self.max_inflight < 1:
            raise ValueError(f"max_inflight must be at least 1, got {self.max_inflight}")
        for name in ("stall_timeout_s", "router_stale_s", "submit_timeout_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be a positive number of seconds, got {getattr(self, name)}")
        if self.drain_timeout_s < 0:
            raise ValueError(f"drain_timeout_s must be >= 0, got {self.drain_timeout_s}")


def build_parser() -> argparse.ArgumentParser:
    d = GatewayConfig.__dataclass_fields__
    p = argparse.ArgumentParser(prog="python -m services.gateway", description="OpenAI-compatible HTTP gateway.")
    p.add_argument("--nats", default=env.nats_url(), help="NATS URL(s), comma-separated [$TOKENPOOL_NATS_URL]")
    p.add_argument("--catalog", type=Path, default=env.catalog_path(), help="model catalog [$TOKENPOOL_CATALOG]")
    p.add_argument("--model-store", type=Path, default=env.model_store(), help="[$TOKENPOOL_MODEL_STORE]")
    p.add_argument("--host", default=env.gateway_host(), help="listen address [$TOKENPOOL_GATEWAY_HOST]")
    p.add_argument("--port", type=int, default=env.gateway_port(), help="listen port [$TOKENPOOL_GATEWAY_PORT]")
    p.add_argument("--max-body-bytes", type=int, default=d["max_body_bytes"].default)
    p.add_argument("--max-inflight", type=int, default=d["max_inflight"].default)
    p.add_argument("--stall-timeout-s", type=float, default=d["stall_timeout_s"].default)
    p.add_argument("--router-stale-s", type=float, default=d["router_stale_s"].default)
    p.add_argument("--submit-timeout-s", type=float, default=d["submit_timeout_s"].default)
    p.add_argument("--drain-timeout-s", type=float, default=d["drain_timeout_s"].default)
    p.add_argument("--log-level", default=None, help="DEBUG, INFO, WARNING or ERROR [$TOKENPOOL_LOG_LEVEL]")
    return p


def config_from_args(args: argparse.Namespace) -> GatewayConfig:
    return GatewayConfig(
        host=args.host,
        port=args.port,
        nats=args.nats,
        catalog=args.catalog,
        model_store=args.model_store,
        max_body_bytes=args.max_body_bytes,
        max_inflight=args.max_inflight,
        stall_timeout_s=args.stall_timeout_s,
        router_stale_s=args.router_stale_s,
        submit_timeout_s=args.submit_timeout_s,
        drain_timeout_s=args.drain_timeout_s,
    )
