"""``tokenpool bench serve``: what the serving stack adds per token, against the engine alone.

    tokenpool bench serve [--streams 100] [--tokens 64] [--duration-s 30] [--engine echo|torch]
                          [--model demo-llama] [--echo-step-s 0] [--json] [--out PATH]

One run: (1) the engine alone in this process (`bench_serve_engine`), then (2) its own stack
on loopback ports (nats-server, router, one gpu_worker with the same engine, gateway;
`bench_serve_stack`) under a closed-loop streaming load (`bench_serve_load`). The figure of
merit is what the stack adds per token over the engine alone (bench_serve_report.METHOD says how).
Every process it starts is stopped on the way out, Ctrl-C included.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from services.cli.bench_run import run_async, run_bench

PROMPT = (
    "Write a short story about a lighthouse keeper who finds a message in a bottle. "
    "The message is written in a language nobody in the village can read."
)
LOAD_GENERATOR = "load generator (this process)"
"""Its key in the report's CPU figures."""


def register(kinds) -> None:
    p = kinds.add_parser(
        "serve",
        help="latency through the whole stack (gateway, router, worker, NATS) vs the engine alone",
        description="Starts its own stack on loopback ports, drives it with closed-loop streaming clients and "
        "reports TTFT, TBT, tokens/s and the per-token overhead over the engine alone. See bench/README.md.",
    )
    p.add_argument("--streams", type=int, default=100, help="concurrent streaming clients (default: %(default)s)")
    p.add_argument("--tokens", type=int, default=64, help="tokens per request (ignore_eos) (default: %(default)s)")
    p.add_argument("--duration-s", type=float, default=30.0, help="seconds of load (default: %(default)s)")
    p.add_argument("--engine", choices=("echo", "torch"), default="echo", help="worker engine (default: %(default)s)")
    p.add_argument("--model", default="demo-llama", help="model in the store (default: %(default)s)")
    p.add_argument("--echo-step-s", type=float, default=0.0, help="echo engine: sleep per step (default: 0)")
    p.add_argument("--turn-linger-s", type=float, default=None,
                   help="the worker's --turn-linger-s (default: the worker's default)")
    p.add_argument("--warmup-s", type=float, help="requests started earlier are left out of latencies "
                   "(default: a fifth of --duration-s, at most 2)")
    p.add_argument("--max-requests", type=int, default=100_000, help="cap on requests sent (default: %(default)s)")
    p.add_argument("--engine-duration-s", type=float, help="seconds of the engine-alone loop (default: "
                   "--duration-s, at most 10)")
    p.add_argument("--startup-timeout-s", type=float, default=180.0, help="wait for /health (default: %(default)s)")
    p.add_argument("--out", type=Path, help="also write the JSON object to this file")
    p.add_argument("--json", action="store_true", help="print the JSON object instead of a summary")
    p.set_defaults(handler=bench_serve)


def _check(args: argparse.Namespace) -> str | None:
    if not 1 <= args.streams <= 1000:
        return f"--streams {args.streams}: use 1 to 1000 concurrent clients"
    if not 2 <= args.tokens <= 4096:
        return f"--tokens {args.tokens}: use 2 to 4096 (TBT needs at least 2 tokens per request)"
    if not 0 < args.duration_s <= 3600:
        return f"--duration-s {args.duration_s}: use more than 0 and at most 3600 seconds"
    if args.echo_step_s < 0 or (args.echo_step_s and args.engine != "echo"):
        return "--echo-step-s must be >= 0 and only goes with --engine echo"
    if args.turn_linger_s is not None and not 0 <= args.turn_linger_s <= 1:
        return f"--turn-linger-s {args.turn_linger_s}: use 0 to 1 seconds"
    if args.max_requests < 1:
        return f"--max-requests {args.max_requests}: must be at least 1"
    if args.engine_duration_s is not None and not 0 < args.engine_duration_s <= 600:
        return f"--engine-duration-s {args.engine_duration_s}: use more than 0 and at most 600 seconds"
    if args.startup_timeout_s <= 0:
        return f"--startup-timeout-s {args.startup_timeout_s}: must be positive"
    if args.warmup_s is not None and not 0 <= args.warmup_s < args.duration_s:
        return f"--warmup-s {args.warmup_s}: must be >= 0 and shorter than --duration-s"
    return None


def bench_serve(args: argparse.Namespace) -> int:
    if problem := _check(args):
        print(f"error: {problem}", file=sys.stderr)
        return 2
    from shared.model_store import ModelStore

    model_path = ModelStore.from_env().path(args.model)  # ModelNotFoundError: a one-line error from main
    warmup_s = args.warmup_s if args.warmup_s is not None else min(2.0, args.duration_s / 5)
    engine_s = args.engine_duration_s or min(args.duration_s, 10.0)
    return run_bench("serve", lambda tmp: _run(args, model_path, tmp, warmup_s, engine_s), args, _format)


def _format(result: dict) -> str:
    from services.cli.bench_serve_report import format_report  # imports aiohttp: only once it is needed

    return format_report(result)


def _log(message: str) -> None:
    print(f"[bench serve] {message}", file=sys.stderr, flush=True)


def _run(args, model_path: Path, tmp: Path, warmup_s: float, engine_s: float) -> dict:
    import torch

    from services.cli.bench_serve_load import LoadSpec, run_load, summarize
    from services.cli.bench_serve_report import build_report
    from services.cli.bench_serve_stack import ServeStack, write_catalog
    from services.gpu_worker.engine.bench import machine
    from shared.tokenizer import Tokenizer

    info = machine(torch.device("cpu"))
    batch = max(64, args.streams)
    prompt_ids = tuple(Tokenizer(model_path).encode(PROMPT))
    catalog_path = write_catalog(tmp / "catalog.toml", args.model, model_path)
    _log(f"engine alone: {args.engine}, {args.streams} sequences, {engine_s:g} s")
    alone = _engine_alone(args, catalog_path, prompt_ids, batch, engine_s)

    worker_args = ["--models", args.model, "--engine", args.engine, "--max-batch-size", str(batch)]
    if args.echo_step_s:
        worker_args += ["--echo-step-s", str(args.echo_step_s)]
    if args.turn_linger_s is not None:
        worker_args += ["--turn-linger-s", str(args.turn_linger_s)]
    router_args = ["--max-running-per-worker", str(max(16, args.streams))]
    (tmp / "stack").mkdir()
    _log("starting nats-server, router, gpu_worker, gateway")
    stack = ServeStack(tmp / "stack", args.model, model_path, worker_args, router_args)
    try:
        stack.start()
        stack.wait_healthy(args.startup_timeout_s)
        _log(f"stack healthy at {stack.base_url}; {args.streams} streams x {args.tokens} tokens, {args.duration_s:g} s")
        spec = LoadSpec(
            stack.base_url, args.model, PROMPT, args.streams, args.tokens, args.duration_s, args.max_requests
        )
        cpu_before, self_before = stack.cpu_seconds(), _self_cpu()
        records = run_async(run_load(spec))
        cpu = {name: used - cpu_before.get(name, 0.0) for name, used in stack.cpu_seconds().items()}
        cpu[LOAD_GENERATOR] = _self_cpu() - self_before
    finally:
        _log("stopping the stack")
        interrupt = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up short
        try:
            stack.stop()
        finally:
            signal.signal(signal.SIGINT, interrupt)
    info["loadavg_end"] = list(os.getloadavg())
    served = summarize(records, warmup_s)
    served["cpu_ms_per_token"] = {name: round(1000 * used / max(served["tokens"], 1), 4) for name, used in cpu.items()}
    served["cpu_s"] = {name: round(used, 2) for name, used in cpu.items()}
    load_cpu = cpu.pop(LOAD_GENERATOR, 0.0)
    served["stack_cpu_over_load_generator"] = round(sum(cpu.values()) / load_cpu, 3) if load_cpu > 0 else None
    return build_report(args, info, prompt_ids, batch, warmup_s, engine_s, alone, served)


def _self_cpu() -> float:
    t = os.times()
    return t.user + t.system


def _engine_alone(args, catalog_path: Path, prompt_ids, batch: int, engine_s: float):
    from services.cli.bench_serve_engine import engine_alone
    from services.gpu_worker.config import WorkerConfig, build_engine, plan_engine
    from shared.catalog import load_catalog
    from shared.model_store import ModelStore

    config = WorkerConfig(
        worker_id="bench-alone", catalog=catalog_path, models=(args.model,), max_batch_size=batch,
        engine=args.engine, echo_step_s=args.echo_step_s,
    )
    catalog = load_catalog(catalog_path, ModelStore.from_env().root)
    engine = build_engine(config, plan_engine(config, catalog))
    try:
        engine.load(args.model)
        return engine_alone(engine, args.model, prompt_ids, args.streams, args.tokens, engine_s)
    finally:
        engine.close()
