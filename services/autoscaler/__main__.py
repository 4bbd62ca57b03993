"""Run the autoscaler.

Usage:
    python -m services.autoscaler [--nats URL[,URL...]] [--catalog PATH] [--interval S]
        [--host-budget-gib G] [--gpu-budget-gib G] [--worker-timeout S] [--window S]
        [--connector none|local|compose] [--initial-workers N] [--worker-arg ARG ...]
        [--run-dir DIR] [--compose-file FILE ...] [--compose-project NAME] [--compose-service S]
        [--compose-slots S1,S2,...] [--compose-profile P ...]
        [--scaling NAME=VALUE ...] [--log-level LEVEL]

--nats defaults to $TOKENPOOL_NATS_URL (nats://127.0.0.1:4222), --catalog to
$TOKENPOOL_CATALOG (deploy/catalog.toml). Model sizes come from the safetensors headers
of the catalog's models. With --connector none (the default) the pool is fixed: models are
placed over the workers that report. `local` starts and releases gpu_worker processes on
this machine (each gets --worker-arg values); `compose` scales the compose file's gpu_worker
service. --scaling sets the planner (services/autoscaler/scaling_config.py), e.g.
--scaling cooldown_s=30 --scaling max_workers=8. Stops cleanly on SIGTERM or SIGINT; the
local connector's workers stop with it, compose workers keep running (a restarted autoscaler
finds them by their reports).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nats.errors

from services.autoscaler.config import AutoscalerConfig
from services.autoscaler.connectors.base import ConnectorError
from services.autoscaler.observe import ModelFacts
from services.autoscaler.scaling_args import scaling_config
from services.autoscaler.service import AutoscalerService
from services.autoscaler.sizes import model_sizes
from shared import env
from shared.catalog import CatalogError, load_catalog
from shared.service_main import run_service, setup_logging, until_stopped

CONNECTORS = ("none", "local", "compose")


def build_parser() -> argparse.ArgumentParser:
    d = AutoscalerConfig(nats="-", catalog=Path())
    parser = argparse.ArgumentParser(prog="python -m services.autoscaler", description="tokenpool autoscaler")
    parser.add_argument("--nats", default=env.nats_url(), help="NATS URL(s), comma-separated")
    parser.add_argument("--catalog", type=Path, default=env.catalog_path(), help="model catalog TOML")
    parser.add_argument("--interval", type=float, default=d.interval_s, help="seconds between plans")
    parser.add_argument("--host-budget-gib", type=float, default=d.host_budget_bytes / (1 << 30),
                        help="host memory per worker for model weights, GiB")
    parser.add_argument("--gpu-budget-gib", type=float, default=d.gpu_budget_bytes / (1 << 30),
                        help="device memory per worker for model weights, GiB")
    parser.add_argument("--worker-timeout", type=float, default=d.worker_timeout_s)
    parser.add_argument("--window", type=float, default=d.window_s, help="seconds of arrivals the demand counts")
    parser.add_argument("--connector", choices=CONNECTORS, default="none", help="how workers are started and released")
    parser.add_argument("--initial-workers", type=int, default=0, help="workers the connector starts at once")
    parser.add_argument("--worker-arg", action="append", default=[], help="an argument for every local worker")
    parser.add_argument("--run-dir", type=Path, default=Path("."), help="local connector: folder for worker logs")
    parser.add_argument("--compose-file", action="append", type=Path, default=[], help="compose connector: compose file(s)")
    parser.add_argument("--compose-project", default=None, help="compose connector: project name")
    parser.add_argument("--compose-service", default="gpu_worker", help="compose connector: the worker service it scales")
    parser.add_argument("--compose-slots", default="", help="compose connector: comma-separated per-GPU worker services "
                        "it brings up one by one instead of scaling (compose.gpus.yaml)")
    parser.add_argument("--compose-profile", action="append", default=[], help="compose connector: a compose profile")
    parser.add_argument("--scaling", action="append", default=[], metavar="NAME=VALUE", help="a planner setting")
    parser.add_argument("--log-level", default=None, help="DEBUG, INFO, WARNING or ERROR (default $TOKENPOOL_LOG_LEVEL)")
    return parser


def make_connector(args: argparse.Namespace):
    if args.connector == "local":
        from services.autoscaler.connectors.local import LocalConnector

        return LocalConnector(nats=args.nats, catalog=args.catalog, worker_args=tuple(args.worker_arg), run_dir=args.run_dir)
    if args.connector == "compose":
        from services.autoscaler.connectors.compose import ComposeConnector

        if not args.compose_file:
            raise ValueError("--connector compose needs --compose-file, e.g. deploy/compose/compose.yaml")
        slots = tuple(x.strip() for x in args.compose_slots.split(",") if x.strip())
        return ComposeConnector(compose_files=tuple(args.compose_file), project=args.compose_project,
                                service=args.compose_service, slots=slots, profiles=tuple(args.compose_profile))
    if args.initial_workers or args.worker_arg:
        raise ValueError("--initial-workers and --worker-arg need --connector local or compose")
    return None


async def serve(config: AutoscalerConfig, facts: dict[str, ModelFacts], connector) -> None:
    async with AutoscalerService(config, facts, connector):
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
            gpu_budget_bytes=int(args.gpu_budget_gib * (1 << 30)),
            worker_timeout_s=args.worker_timeout,
            window_s=args.window,
            initial_workers=args.initial_workers,
            scaling=scaling_config(args.scaling),
        )
        catalog = load_catalog(config.catalog, env.model_store())
        facts = {m: ModelFacts(size, catalog.slo(m).tbt_s) for m, size in model_sizes(catalog).items()}
        connector = make_connector(args)
    except (ValueError, CatalogError, env.EnvError, ConnectorError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        run_service("autoscaler", serve(config, facts, connector))
    except (OSError, nats.errors.NoServersError) as e:
        print(f"error: cannot reach NATS at {config.nats}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
