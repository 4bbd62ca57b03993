"""``tokenpool bench sched``: token-level vs request-level scheduling on the same load, one run.

    tokenpool bench sched [--duration-s 45] [--rate 2.0] [--popularity uniform|zipf] [--tokens 32]
                          [--ttft 1.5] [--tbt 0.3] [--seed 0] [--max-quota S] [--engine torch|echo]
                          [--json] [--out PATH]

One run starts a stack (nats-server, router, ONE gpu_worker serving smollm2-135m-instruct,
demo-llama, demo-qwen2 and demo-mistral, gateway; `bench_serve_stack`) with the router's
`--scheduling token`, drives it with a seeded open-loop Poisson load over the four models
(`bench_sched_workload`, `bench_sched_load`), stops it, and does the same with
`--scheduling request` (one model at a time per worker until its requests finish). Both see
identical arrivals. Each request is measured against the run's SLO class with
services.router.slo.attainment; `bench_sched_report` prints both policies side by side.

The default SLO class is scaled to this 2-core CPU. There, with one engine thread, a decode
step of SmolLM2-135M takes ~50-60 ms alone and ~130 ms for a batch of 10, a step of a demo
model ~8-15 ms, and prefilling a few 30-token SmolLM2 prompts ~0.2-0.3 s; a 32-token
SmolLM2 request is ~2-4 s of decoding.

- TTFT 1.5 s is what separates the two policies. With request-level scheduling a request
  for model B waits until every request of the model on the worker has finished, and
  requests for that model that keep arriving join its running turn, so a demo-model request
  that arrives while SmolLM2 decodes waits seconds for its first token (and its later token
  deadlines re-anchor only after that miss). Token-level scheduling prefills a newcomer at
  the start of its model's next turn (or a turn of its own when its TTFT cannot wait), within
  a round: TTFT p99 ~1 s at the default load.
- TBT 0.3 s (~5 SmolLM2 steps alone, ~2 at batch 10; ~20-30 demo-model steps) can be kept
  by both on average: request-level decodes one model alone, and token-level's quotas are
  sized so that each model banks enough tokens ahead of their deadlines to cover the other
  models' turns (tokens then come in bursts; see bench/README.md).
- Load 2 requests/s, uniform over the four models, 32 tokens each: busy enough that a
  request often arrives while another model runs, below what token-level can serve.

Every process it starts is stopped on the way out, Ctrl-C included.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import urllib.request
from pathlib import Path

from services.cli.bench_run import run_async, run_bench
from services.cli.bench_sched_workload import POPULARITY

MODELS = ("smollm2-135m-instruct", "demo-llama", "demo-qwen2", "demo-mistral")
POLICIES = ("token", "request")
PROMPT = (
    "Write a short story about a lighthouse keeper who finds a message in a bottle. "
    "The message is written in a language nobody in the village can read."
)


def register(kinds) -> None:
    p = kinds.add_parser(
        "sched",
        help="SLO attainment of token-level vs request-level scheduling, 4 models on 1 worker, same load",
        description="Starts a stack with one worker serving four models, twice (router --scheduling token, then "
        "request), sends both the same seeded open-loop Poisson load of streaming requests and prints SLO "
        "attainment, strict attainment, TTFT and TBT of both. See bench/README.md.",
    )
    p.add_argument("--duration-s", type=float, default=45.0,
                   help="seconds of arrivals per policy (default: %(default)s)")
    p.add_argument("--rate", type=float, default=2.0, help="requests per second over all models (default: %(default)s)")
    p.add_argument("--popularity", choices=POPULARITY, default="uniform",
                   help="how requests spread over the models; zipf: the first model most (default: %(default)s)")
    p.add_argument("--zipf-exponent", type=float, default=1.0, help="with --popularity zipf (default: %(default)s)")
    p.add_argument("--tokens", type=int, default=32, help="tokens per request, ignore_eos (default: %(default)s)")
    p.add_argument("--ttft", type=float, default=1.5, help="TTFT objective, seconds (default: %(default)s)")
    p.add_argument("--tbt", type=float, default=0.3, help="TBT objective, seconds (default: %(default)s)")
    p.add_argument("--max-quota", type=float, help="the router's --max-quota: longest token-level decode turn "
                   "while other models wait, seconds (default: the router's)")
    p.add_argument("--seed", type=int, default=0, help="seed of the arrivals (default: %(default)s)")
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated models the one worker serves "
                   "(default: %(default)s)")
    p.add_argument("--engine", choices=("torch", "echo"), default="torch", help="worker engine (default: %(default)s)")
    p.add_argument("--echo-step-s", type=float, default=0.0, help="echo engine: sleep per step (default: 0)")
    p.add_argument("--worker-threads", type=int, default=1, help="torch engine CPU threads; 1 leaves a core of "
                   "a 2-core host to the rest of the stack and the client (default: %(default)s)")
    p.add_argument("--drain-s", type=float, default=30.0, help="after the last arrival, how long open requests "
                   "may finish before they count as failed (default: %(default)s)")
    p.add_argument("--startup-timeout-s", type=float, default=180.0, help="wait for /health (default: %(default)s)")
    p.add_argument("--out", type=Path, help="also write the JSON object to this file (e.g. bench/results/...)")
    p.add_argument("--json", action="store_true", help="print the JSON object instead of the table")
    p.set_defaults(handler=bench_sched)


def _models(args: argparse.Namespace) -> tuple[str, ...]:
    return tuple(m.strip() for m in args.models.split(",") if m.strip())


def _check(args: argparse.Namespace) -> str | None:
    models = _models(args)
    if len(models) < 2:
        return f"--models {args.models!r}: give at least two models, or there is nothing to schedule between"
    if len(set(models)) != len(models):
        return f"--models {args.models!r}: a model is listed twice"
    if not 0 < args.duration_s <= 3600:
        return f"--duration-s {args.duration_s}: use more than 0 and at most 3600 seconds"
    if not 0 < args.rate <= 1000:
        return f"--rate {args.rate}: use more than 0 and at most 1000 requests per second"
    if not args.zipf_exponent > 0:
        return f"--zipf-exponent {args.zipf_exponent}: must be > 0"
    if not 2 <= args.tokens <= 1024:
        return f"--tokens {args.tokens}: use 2 to 1024 (TBT needs at least 2 tokens per request)"
    for flag, value in (("--ttft", args.ttft), ("--tbt", args.tbt)):
        if not 0 < value <= 600:
            return f"{flag} {value}: an objective must be more than 0 and at most 600 seconds"
    if args.echo_step_s < 0 or (args.echo_step_s and args.engine != "echo"):
        return "--echo-step-s must be >= 0 and only goes with --engine echo"
    if not 1 <= args.worker_threads <= 256:
        return f"--worker-threads {args.worker_threads}: use 1 to 256"
    if args.max_quota is not None and not 0 < args.max_quota <= 600:
        return f"--max-quota {args.max_quota}: use more than 0 and at most 600 seconds"
    if args.drain_s < 0:
        return f"--drain-s {args.drain_s}: must be >= 0"
    if args.startup_timeout_s <= 0:
        return f"--startup-timeout-s {args.startup_timeout_s}: must be positive"
    if args.rate * args.duration_s < 1:
        return f"--rate {args.rate} x --duration-s {args.duration_s} expects less than one request; raise either"
    return None


def bench_sched(args: argparse.Namespace) -> int:
    if problem := _check(args):
        print(f"error: {problem}", file=sys.stderr)
        return 2
    from services.cli.bench_sched_workload import poisson_arrivals, popularity
    from shared.model_store import ModelStore

    models = _models(args)
    store = ModelStore.from_env()
    paths = {m: store.path(m) for m in models}  # ModelNotFoundError: a one-line error from main
    weights = popularity(models, args.popularity, args.zipf_exponent)
    arrivals = poisson_arrivals(models, weights, args.rate, args.duration_s, args.seed)
    if not arrivals:
        print(f"error: seed {args.seed} gives no arrival in {args.duration_s:g} s at {args.rate:g}/s; "
              "raise --duration-s or --rate", file=sys.stderr)
        return 2
    return run_bench("sched", lambda tmp: _run(args, models, paths, weights, arrivals, tmp), args, _format)


def _format(result: dict) -> str:
    from services.cli.bench_sched_report import format_report  # imports aiohttp: only once it is needed

    return format_report(result)


def _log(message: str) -> None:
    print(f"[bench sched] {message}", file=sys.stderr, flush=True)


def _run(args, models, paths, weights, arrivals, tmp: Path) -> dict:
    import torch

    from services.cli.bench_sched_report import build_report
    from services.cli.bench_serve_stack import write_models_catalog
    from services.gpu_worker.engine.bench import machine

    info = machine(torch.device("cpu"))
    catalog = write_models_catalog(tmp / "catalog.toml", paths, args.ttft, args.tbt)
    figures = {}
    for policy in POLICIES:
        figures[policy] = _run_policy(args, policy, models, paths, catalog, arrivals, tmp / policy)
    info["loadavg_end"] = list(os.getloadavg())
    counts = {m: sum(a.model == m for a in arrivals) for m in models}
    config = {
        "models": list(models), "popularity": args.popularity, "model_shares": dict(zip(models, weights)),
        "zipf_exponent": args.zipf_exponent if args.popularity == "zipf" else None,
        "requests": len(arrivals), "requests_by_model": counts, "rate_per_s": args.rate,
        "duration_s": args.duration_s, "tokens": args.tokens, "ttft_s": args.ttft, "tbt_s": args.tbt,
        "seed": args.seed, "max_quota_s": args.max_quota, "engine": args.engine, "echo_step_s": args.echo_step_s,
        "worker_threads": args.worker_threads, "drain_s": args.drain_s, "workers": 1,
        "prompt": PROMPT, "policies_in_order": list(POLICIES),
    }
    return build_report(config, info, figures["token"], figures["request"])


def _run_policy(args, policy: str, models, paths, catalog: Path, arrivals, run_dir: Path) -> dict:
    from services.cli.bench_sched_load import OpenLoopSpec
    from services.cli.bench_sched_report import counts_delta, policy_figures, router_counts
    from services.cli.bench_serve_stack import ServeStack
    from shared.nats_server import free_port

    run_dir.mkdir()
    metrics_port = free_port()
    router_args = ["--scheduling", policy, "--metrics-port", str(metrics_port)]
    if args.max_quota is not None:
        router_args += ["--max-quota", str(args.max_quota)]
    worker_args = ["--models", ",".join(models), "--engine", args.engine]
    if args.engine == "torch":
        worker_args += ["--threads", str(args.worker_threads)]
    if args.echo_step_s:
        worker_args += ["--echo-step-s", str(args.echo_step_s)]
    metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    _log(f"{policy}: starting nats-server, router (--scheduling {policy}), gpu_worker ({len(models)} models), gateway")
    stack = ServeStack(run_dir, models[0], paths[models[0]], worker_args, router_args, catalog=catalog)
    try:
        stack.start()
        stack.wait_healthy(args.startup_timeout_s)
        _log(f"{policy}: stack healthy at {stack.base_url}; one warm-up request per model")
        run_async(_warm_up(stack, models, args.tokens))
        before = _scrape(metrics_url)
        _log(f"{policy}: {len(arrivals)} requests over {args.duration_s:g} s (+ up to {args.drain_s:g} s to finish)")
        spec = OpenLoopSpec(stack.base_url, PROMPT, args.tokens, args.drain_s)
        sent, turns = run_async(_load(stack.nats.url, stack.WORKER_ID, spec, arrivals))
        after = _scrape(metrics_url)
    finally:
        _log(f"{policy}: stopping the stack")
        interrupt = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up short
        try:
            stack.stop()
        finally:
            signal.signal(signal.SIGINT, interrupt)
    router = counts_delta(router_counts(after), router_counts(before)) if before is not None and after else None
    figures = policy_figures(policy, sent, args.ttft, args.tbt, router, models)
    figures["turns"] = turns
    _log(f"{policy}: {figures['completed']}/{figures['requests']} completed, "
         f"mean attainment {figures['mean_attainment']}, strict {figures['strict_attainment']}")
    return figures


async def _load(nats_url: str, worker_id: str, spec, arrivals) -> tuple[list, dict]:
    """The open-loop load, with the worker's turns watched on the bus meanwhile."""
    from services.cli.bench_sched_load import run_open_loop
    from services.cli.bench_sched_turns import TurnWatch, summarize_turns

    async with TurnWatch(nats_url, worker_id) as watch:
        sent = await run_open_loop(spec, arrivals)
    return sent, summarize_turns(watch.turns, watch.reports)


async def _warm_up(stack, models, tokens: int) -> None:
    """One request per model, one after the other: every model answers before the load starts,
    and each has run once (first-call costs are paid outside the measurement)."""
    import aiohttp

    from services.cli.bench_sched_load import request_body
    from services.cli.bench_serve_load import RequestRecord, stream_request

    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for model in models:
            record = RequestRecord(started=0.0)
            await stream_request(session, stack.base_url + "/v1/completions", request_body(model, PROMPT, tokens),
                                 tokens, record, 0.0)
            if record.error is not None:
                raise RuntimeError(
                    f"the warm-up request for {model} failed ({record.error}); worker log:\n{stack.log_tail('worker')}"
                )


def _scrape(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.read().decode()
    except OSError:
        return None
