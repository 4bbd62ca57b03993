"""Run the autoscaler.

Usage:
    python -m services.autoscaler [--nats URL[,URL...]] [--catalog PATH] [--interval S]
        [--host-budget-gib G] [--worker-timeout S] [--log-level LEVEL]

--nats defaults to $TOKENPOOL_NATS_URL (nats://127.0.0.1:4222), --catalog to
$TOKENPOOL_CATALOG (deploy/catalog.toml). Model sizes come from the safetensors headers
of the catalog's models. Stops cleanly on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nats.errors

from services.autoscaler.config import AutoscalerConfig
from services.autoscaler.service import AutoscalerService
from services.autoscaler.sizes import model_sizes
from shared import env
from shared.service_main import run_service, setup_logging, until_stopped
from shared.catalog import CatalogError, load_catalog


def build_parser() -> argparse.ArgumentParser:
    d = AutoscalerConfig(nats="-", catalog=Path())
    parser = argparse.ArgumentParser(prog="python -m services.autoscaler", description="tokenpool autoscaler")
    parser.add_argument("--nats", default=env.nats_url(), help="NATS URL(s), comma-separated")
    parser.add_argument("--catalog", type=Path, default=env.catalog_path(), help="model catalog TOML")
    parser.add_argument("--interval", type=float, default=d.interval_s, help="seconds between plans")
    parser.add_argument("--host-budget-gib", type=float, default=d.host_budget_bytes / (1 << 30),
                        help="host memory per worker for model weights, GiB")
    parser.add_argument("--worker-timeout", type=float, default=d.worker_timeout_s)
    parser.add_argument("--log-level", default=None, help="DEBUG, INFO, WARNING or ERROR (default $TOKENPOOL_LOG_LEVEL)")
    return parser


async def serve(config: AutoscalerConfig, sizes: dict[str, int]) -> None:
    async with AutoscalerService(config, sizes):
        await until_stopped()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        setup_logging(args.log_level)
        config = AutoscalerConfig(
            nats=args.nats,
            catalog=args.catalog,
            interval_s=args.interval,
            host_budget_bytes=int(args.host_budget_gib * (1 << 30)),
            worker_timeout_s=args.worker_timeout,
        )
        sizes = model_sizes(load_catalog(config.catalog, env.model_store()))
    except (ValueError, CatalogError, env.EnvError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        run_service("autoscaler", serve(config, sizes))
    except (OSError, nats.errors.NoServersError) as e:
        print(f"error: cannot reach NATS at {config.nats}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
