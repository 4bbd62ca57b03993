"""Runs one gpu_worker: the engine for one device, fed by the router over NATS.

Usage:
    python -m services.gpu_worker --nats nats://127.0.0.1:4222 --catalog deploy/catalog.toml \\
        --worker-id worker-0 [--models demo-llama,demo-qwen2] [--device cuda] [--kv-arena-bytes 1GiB]
        [--engine torch|echo] [--echo-step-s 0.02] [--kv-handoff-dir /dev/shm/tokenpool-kv]

Environment fallbacks: TOKENPOOL_NATS_URL, TOKENPOOL_CATALOG, TOKENPOOL_WORKER_ID,
TOKENPOOL_DEVICE, TOKENPOOL_LOG_LEVEL, TOKENPOOL_MODEL_STORE, TOKENPOOL_KV_HANDOFF_DIR.
Sizes take KiB/MiB/GiB suffixes. The router's RunTurn commands decide what the worker computes and when; requests assigned
to it wait for a turn. SIGTERM or SIGINT drains: no new work, held requests get
--drain-timeout seconds to finish in the router's turns, the rest are released silently for
the router to move. Exit status 2 on a configuration error.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from services.gpu_worker.config import ENGINES, WorkerConfig
from services.gpu_worker.engine.errors import EngineError
from services.gpu_worker.service import GpuWorker, WorkerError
from shared import env
from shared.service_main import run_service, setup_logging
from shared.catalog import CatalogError

_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1000, "kib": 1 << 10, "m": 1 << 20, "mb": 10**6, "mib": 1 << 20,
          "g": 1 << 30, "gb": 10**9, "gib": 1 << 30}


def parse_bytes(text: str) -> int:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    if not match or match.group(2).lower() not in _UNITS:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size; write e.g. 268435456, 256MiB or 2GiB")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m services.gpu_worker", description=__doc__.split("\n")[0])
    p.add_argument("--nats", default=None, help="NATS URL(s), comma-separated (env TOKENPOOL_NATS_URL)")
    p.add_argument("--catalog", type=Path, default=None, help="model catalog (env TOKENPOOL_CATALOG, default deploy/catalog.toml)")
    p.add_argument("--worker-id", default=None, help="id on the bus (env TOKENPOOL_WORKER_ID, default worker-<host>-<pid>)")
    p.add_argument("--models", default="", help="comma-separated catalog models to serve (default: all)")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (env TOKENPOOL_DEVICE, default cpu)")
    p.add_argument("--dtype", default=None, help="auto, float32, bfloat16 or float16 (default: from the catalog)")
    p.add_argument("--weight-arena-bytes", type=parse_bytes, default=None, help="default: every served model's weights")
    p.add_argument("--kv-arena-bytes", type=parse_bytes, default=None, help="default: 256MiB on CPU, half the free GPU memory")
    p.add_argument("--kv-page-bytes", type=parse_bytes, default=WorkerConfig.kv_page_bytes, help="default 1MiB")
    p.add_argument("--host-swap-bytes", type=parse_bytes, default=None, help="default: twice the KV arena")
    p.add_argument("--max-batch-size", type=int, default=WorkerConfig.max_batch_size)
    p.add_argument("--max-running", type=int, default=None,
                   help="requests the router may give this worker at once (default: 32 on CPU, 256 on CUDA)")
    p.add_argument("--max-batch-tokens", type=int, default=WorkerConfig.max_batch_tokens)
    p.add_argument("--no-prefix-cache", dest="prefix_caching", action="store_false",
                   help="compute every prompt in full instead of reusing the KV pages of earlier prompts' shared prefixes")
    p.add_argument("--report-interval", type=float, default=WorkerConfig.report_interval_s, help="seconds between WorkerState reports")
    p.add_argument("--drain-timeout", type=float, default=WorkerConfig.drain_timeout_s, help="seconds to finish requests on SIGTERM")
    p.add_argument("--engine", choices=ENGINES, default=WorkerConfig.engine,
                   help="torch (default) or echo: no compute, tokens echo the prompt (control-plane benchmarks)")
    p.add_argument("--echo-step-s", type=float, default=WorkerConfig.echo_step_s,
                   help="with --engine echo: seconds each step sleeps, standing in for a model (default 0)")
    p.add_argument("--turn-linger-s", type=float, default=WorkerConfig.turn_linger_s,
                   help="seconds a turn that admits newcomers waits for one when its requests are done (default 0.005)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for the engine's math (default on CPU: every core but one; on CUDA: torch's)")
    p.add_argument("--kv-handoff-dir", type=Path, default=None,
                   help="directory where this machine's workers hand KV caches from prefill to decode "
                        "(env TOKENPOOL_KV_HANDOFF_DIR, default /dev/shm/tokenpool-kv)")
    p.add_argument("--log-level", default=None, help="DEBUG, INFO, WARNING or ERROR (env TOKENPOOL_LOG_LEVEL)")
    return p


def config_from_args(args: argparse.Namespace) -> WorkerConfig:
    worker_id = args.worker_id or env.worker_id()
    extra = {"worker_id": worker_id} if worker_id else {}
    return WorkerConfig(
        **extra,
        nats=args.nats or env.nats_url(),
        catalog=args.catalog or env.catalog_path(),
        models=tuple(m.strip() for m in args.models.split(",") if m.strip()),
        device=args.device or env.device(),
        dtype=args.dtype,
        weight_arena_bytes=args.weight_arena_bytes,
        kv_arena_bytes=args.kv_arena_bytes,
        kv_page_bytes=args.kv_page_bytes,
        host_swap_bytes=args.host_swap_bytes,
        max_batch_size=args.max_batch_size,
        max_running=args.max_running,
        max_batch_tokens=args.max_batch_tokens,
        prefix_caching=args.prefix_caching,
        report_interval_s=args.report_interval,
        drain_timeout_s=args.drain_timeout,
        engine=args.engine,
        echo_step_s=args.echo_step_s,
        turn_linger_s=args.turn_linger_s,
        threads=args.threads,
        kv_handoff_dir=args.kv_handoff_dir or env.kv_handoff_dir(),
    )


async def serve(config: WorkerConfig) -> None:
    async with GpuWorker(config) as worker:
        await worker.run()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        setup_logging(args.log_level)
        config = config_from_args(args)
    except (ValueError, env.EnvError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        run_service("gpu_worker", serve(config))
    except (CatalogError, EngineError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except WorkerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
