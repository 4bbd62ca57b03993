"""Run the router.

Usage:
    python -m services.router [--nats URL[,URL...]] [--catalog PATH] [--router-id ID]
        [--worker-timeout S] [--no-worker-grace S] [--max-queue-per-model N]
        [--max-running-per-worker N] [--ack-wait S] [--in-progress-interval S]
        [--log-level LEVEL]

--nats defaults to $TOKENPOOL_NATS_URL (nats://127.0.0.1:4222), --catalog to
$TOKENPOOL_CATALOG (deploy/catalog.toml). Stops cleanly on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nats.errors

from services.router.config import PolicyConfig, RouterConfig, ScoreWeights
from services.router.service import RouterService
from shared import env
from shared.service_main import run_service, setup_logging, until_stopped
from shared.catalog import Catalog, CatalogError, load_catalog


def build_parser() -> argparse.ArgumentParser:
    d, p = RouterConfig(nats="-", catalog=Path()), PolicyConfig()
    parser = argparse.ArgumentParser(prog="python -m services.router", description="tokenpool router")
    parser.add_argument("--nats", default=env.nats_url(), help="NATS URL(s), comma-separated")
    parser.add_argument("--catalog", type=Path, default=env.catalog_path(), help="model catalog TOML")
    parser.add_argument("--router-id", default=d.router_id)
    parser.add_argument("--consumer", default=d.consumer, help="durable JetStream consumer name")
    parser.add_argument("--ack-wait", type=float, default=d.ack_wait_s, help="seconds before JetStream redelivers")
    parser.add_argument(
        "--in-progress-interval", type=float, default=d.in_progress_interval_s, help="capped at a third of --ack-wait"
    )
    parser.add_argument("--max-ack-pending", type=int, default=d.max_ack_pending)
    parser.add_argument("--startup-wait", type=float, default=d.startup_wait_s)
    parser.add_argument("--worker-timeout", type=float, default=p.worker_timeout_s)
    parser.add_argument("--no-worker-grace", type=float, default=p.no_worker_grace_s)
    parser.add_argument("--max-queue-per-model", type=int, default=p.max_queue_per_model)
    parser.add_argument("--max-running-per-worker", type=int, default=p.max_running_per_worker,
                        help="requests one worker holds at once (default: what each worker reports, "
                             "gpu_worker --max-running: 32 on CPU, 256 on CUDA)")
    parser.add_argument(
        "--max-tenant-share", type=float, default=p.max_tenant_share,
        help="the share of the pool's request slots one tenant (OpenAI `user`) may hold; its other requests "
             "wait even while slots are free (default 1: no cap)",
    )
    parser.add_argument(
        "--no-tenant-fairness", dest="tenant_fairness", action="store_false",
        help="a full pool serves queued requests first come, first served, instead of the tenant "
             "(OpenAI `user`) with the fewest requests in service first",
    )
    parser.add_argument(
        "--tenant-preemption", action="store_true",
        help="when the pool is full, a waiting tenant takes a running request's slot from the tenant with "
             "at least two more requests in service (the request resumes later from its tokens)",
    )
    parser.add_argument("--weight-warmth", type=float, default=p.weights.warmth)
    parser.add_argument("--weight-load", type=float, default=p.weights.load)
    parser.add_argument("--weight-kv", type=float, default=p.weights.kv_headroom)
    parser.add_argument(
        "--scheduling", choices=("token", "request"), default=p.scheduling,
        help="token: models take SLO-sized turns (default); request: one model at a time until its requests finish",
    )
    parser.add_argument("--max-quota", type=float, default=p.max_quota_s, help="longest decode turn while others wait (s)")
    parser.add_argument(
        "--max-round-load", type=float, default=p.max_round_load,
        help="a request of a model another worker holds waits for a slot there rather than add a turn to a worker "
        "whose round would then need more than this share of its time (default %(default)s; 1.0: just keeps the TBT)",
    )
    parser.add_argument(
        "--no-prefix-routing", dest="prefix_routing", action="store_false",
        help="choose among workers alike by load only, not by the prompt their prefix caches probably hold",
    )
    parser.add_argument(
        "--prefix-load-slack", type=float, default=p.prefix_load_slack,
        help="how much busier (a share of its slots) a worker with more of the prompt cached may be than the "
        "least loaded one and still take the request (default %(default)s)",
    )
    parser.add_argument(
        "--prefill-workers", type=int, default=p.prefill_workers,
        help="disaggregated mode: this many workers only prefill, the rest only decode (default 0: both everywhere)",
    )
    parser.add_argument(
        "--kv-handoff", action="store_true",
        help="with --prefill-workers on one machine: move the KV cache through host memory, not by recompute",
    )
    parser.add_argument("--attainment-window", type=float, default=p.attainment_window_s,
                        help="seconds of finished requests whose SLO attainment the router reports (default 60)")
    parser.add_argument("--metrics-port", type=int, default=None, help="serve Prometheus /metrics here (0: a free port)")
    parser.add_argument("--metrics-host", default=d.metrics_host)
    parser.add_argument("--log-level", default=None, help="DEBUG, INFO, WARNING or ERROR (default $TOKENPOOL_LOG_LEVEL)")
    return parser


def build_config(args: argparse.Namespace) -> RouterConfig:
    policy = PolicyConfig(
        worker_timeout_s=args.worker_timeout,
        no_worker_grace_s=args.no_worker_grace,
        max_queue_per_model=args.max_queue_per_model,
        max_running_per_worker=args.max_running_per_worker,
        tenant_fairness=args.tenant_fairness,
        tenant_preemption=args.tenant_preemption,
        max_tenant_share=args.max_tenant_share,
        weights=ScoreWeights(warmth=args.weight_warmth, load=args.weight_load, kv_headroom=args.weight_kv),
        scheduling=args.scheduling,
        max_quota_s=args.max_quota,
        max_round_load=args.max_round_load,
        prefix_routing=args.prefix_routing,
        prefix_load_slack=args.prefix_load_slack,
        prefill_workers=args.prefill_workers,
        kv_handoff=args.kv_handoff,
        attainment_window_s=args.attainment_window,
    )
    return RouterConfig(
        nats=args.nats,
        catalog=args.catalog,
        router_id=args.router_id,
        consumer=args.consumer,
        ack_wait_s=args.ack_wait,
        in_progress_interval_s=min(args.in_progress_interval, args.ack_wait / 3),
        max_ack_pending=args.max_ack_pending,
        startup_wait_s=args.startup_wait,
        metrics_host=args.metrics_host,
        metrics_port=args.metrics_port,
        policy=policy,
    )


async def serve(config: RouterConfig, catalog: Catalog) -> None:
    async with RouterService(config, catalog):
        await until_stopped()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        setup_logging(args.log_level)
        config = build_config(args)
        catalog = load_catalog(config.catalog, env.model_store())
    except (ValueError, CatalogError, env.EnvError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        run_service("router", serve(config, catalog))
    except (OSError, nats.errors.NoServersError) as e:
        print(f"error: cannot reach NATS at {config.nats}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
