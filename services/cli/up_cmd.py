"""``tokenpool up``: the whole stack on this machine, until Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from datetime import datetime
from pathlib import Path

from services.gpu_worker.cpu_threads import cpu_engine_threads
from shared import env


def register(subparsers) -> None:
    p = subparsers.add_parser("up", help="start nats-server, router, autoscaler, workers and gateway")
    p.add_argument("--host", default="127.0.0.1", help="gateway address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="gateway port (default 8000)")
    p.add_argument("--workers", type=int, default=1, help="gpu_worker processes (default 1)")
    p.add_argument("--config", type=Path, default=None, help="model catalog (default deploy/catalog.toml)")
    p.add_argument("--nats", default=None, help="use this NATS server instead of starting one")
    p.add_argument("--run-dir", type=Path, default=None, help="folder for JetStream data and state")
    p.add_argument("--device", default=None, help="worker device: cpu or cuda")
    p.add_argument(
        "--worker-threads", type=int, default=None,
        help="CPU threads for each worker's engine math (default: the cores but one, which the other "
             "services keep, shared among the --workers, or under --autoscale among its max_workers)",
    )
    p.add_argument(
        "--scheduling", choices=("token", "request"), default="token",
        help="token: models share a worker in SLO-sized turns (default); request: one model at a time",
    )
    p.add_argument("--autoscale", action="store_true",
                   help="the autoscaler starts the workers (--workers at first), adds them under load and releases idle ones")
    p.add_argument("--scaling", action="append", default=[], metavar="NAME=VALUE",
                   help="an autoscaler planner setting, e.g. max_workers=4 (see services/autoscaler/scaling_config.py)")
    p.add_argument("--router-metrics-port", type=int, default=None, help="serve the router's /metrics on this port")
    p.set_defaults(handler=up)


class _Stop(Exception):
    pass


def _raise_stop(signum, frame):
    raise _Stop()


def router_args(args: argparse.Namespace) -> tuple[str, ...]:
    extra = ("--scheduling", args.scheduling)
    if args.router_metrics_port is not None:
        extra += ("--metrics-port", str(args.router_metrics_port))
    return extra


def worker_threads(requested: int | None, workers: int, cores: int | None) -> int:
    """The workers share one machine: by default its cores but one are divided among them."""
    if requested is not None:
        if requested < 1:
            raise ValueError(f"--worker-threads must be at least 1, got {requested}")
        return requested
    return cpu_engine_threads(cores, workers)


def most_workers(args: argparse.Namespace) -> int:
    """The workers that may run at once: --workers, or under --autoscale the planner's
    max_workers (the autoscaler adds workers with the flags the first ones got)."""
    if not args.autoscale:
        return args.workers
    from services.autoscaler.scaling_args import scaling_config

    return max(args.workers, scaling_config(args.scaling).max_workers)


def worker_args(args: argparse.Namespace) -> tuple[str, ...]:
    threads = worker_threads(args.worker_threads, most_workers(args), os.cpu_count())
    return (("--device", args.device) if args.device else ()) + ("--threads", str(threads))


def up(args: argparse.Namespace) -> int:
    from services.autoscaler.scaling_args import scaling_config
    from services.supervisor import Stack, StackConfig, gateway_health

    run_dir = args.run_dir or env.state_dir() / "runs" / datetime.now().strftime("%Y%m%d-%H%M%S")
    try:
        scaling_config(args.scaling)  # a bad setting fails here, not in a child restarted forever
        config = StackConfig(
            host=args.host,
            port=args.port,
            workers=args.workers,
            catalog=args.config or env.catalog_path(),
            nats=args.nats,
            run_dir=run_dir,
            worker_args=worker_args(args),
            router_args=router_args(args),
            autoscale=args.autoscale,
            autoscaler_args=tuple(f"--scaling={pair}" for pair in args.scaling),
        )
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    stack = Stack(config)
    signal.signal(signal.SIGTERM, _raise_stop)
    signal.signal(signal.SIGINT, _raise_stop)
    announced = False
    try:
        stack.start()
        while True:
            stack.watch_once(time.monotonic())
            if not announced and gateway_health(stack.gateway_url)[0] == 200:
                announced = True
                print(json.dumps({"status": "serving", "url": stack.gateway_url, "nats": stack.nats_url}), flush=True)
            time.sleep(0.5)
    except _Stop:
        pass
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stack.stop()
    return 0
