"""Does the simulator predict the real stack? One seeded load, run for real and simulated.

    python -m services.sim.cost_validate --profile bench/results/engine-cost-cpu-DATE.json \
        [--policy token,request] [--duration-s 30] [--rate 2] [--out PATH]

The real side is `tokenpool bench sched`'s: a stack (nats-server, router --scheduling P, one
gpu_worker serving our four models with one engine thread, gateway), the seeded open-loop
Poisson load of streaming completions, attainment measured from the client's token times
(services/router/slo/attainment.py). The simulated side runs the same arrivals (each request's
prompt tokens counted with its model's tokenizer, the same output length) through
`services.sim.run.simulate` with the engine cost profile, one simulated worker laid out as the
real one (an arena that holds every model, the worker's 1 MiB KV pages and batch limits) and the
router's default policy settings, as the real router runs them: once with the profile as
measured, once with each model's decode and prefill step times scaled by what the worker's
TurnReports of the real run show (step_ratios: on a shared host the load of other processes
slows the engine by 1.0-1.5x from one run to the next, which no profile measured beforehand can
know). Printed: both attainments, their gaps in points, the ratios.

Figures (bench/results/validation-cpu-2026-11-21.json, 45 s, 80 requests, quiet host):
    token    real 0.981 (strict 1.000)   sim 1.000 (1.000)   calibrated 0.984 (0.975)
    request  real 0.748 (strict 0.613)   sim 0.766 (0.625)   calibrated 0.769 (0.625)
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from services.sim.cost_engine import EngineProfile, load_engine_profile

MODELS = ("smollm2-135m-instruct", "demo-llama", "demo-qwen2", "demo-mistral")
KV_PAGE_BYTES = 1 << 20
"""The worker's default (services/gpu_worker/config.py)."""


@dataclass(frozen=True)
class LoadSpec:
    models: tuple[str, ...] = MODELS
    rate: float = 2.0
    duration_s: float = 30.0
    tokens: int = 32
    ttft_s: float = 1.5
    tbt_s: float = 0.3
    seed: int = 0
    popularity: str = "uniform"
    drain_s: float = 30.0
    worker_threads: int = 1


def arrivals(spec: LoadSpec):
    from services.cli.bench_sched_workload import poisson_arrivals, popularity

    return poisson_arrivals(
        spec.models, popularity(spec.models, spec.popularity), spec.rate, spec.duration_s, spec.seed
    )


def prompt_tokens(models: Sequence[str]) -> dict[str, int]:
    """Tokens of bench sched's prompt for each model, as the gateway counts them."""
    from services.cli.bench_sched import PROMPT
    from shared.model_store import ModelStore
    from shared.tokenizer import Tokenizer

    store = ModelStore.from_env()
    return {m: len(Tokenizer(store.path(m)).encode(PROMPT)) for m in models}


def simulated(spec: LoadSpec, policy: str, profile: EngineProfile, prompt: dict[str, int]) -> dict:
    """The load through the simulator with the engine profile: its summary dict."""
    from services.router.config import PolicyConfig
    from services.sim.device import DeviceLayout
    from services.sim.run import SimConfig, simulate
    from services.sim.worker import SimWorkerConfig
    from services.sim.workload import Arrival, make_workload

    work = [Arrival(a.at_s, a.model, prompt[a.model], spec.tokens) for a in arrivals(spec)]
    workload = make_workload(f"bench-sched-seed{spec.seed}", work, {m: m for m in spec.models})
    arena = sum(profile.models[m].weight_bytes for m in spec.models)
    config = SimConfig(
        gpus=1,
        scheduling=policy,
        ttft_s=spec.ttft_s,
        tbt_s=spec.tbt_s,
        drain_s=spec.drain_s,
        worker=SimWorkerConfig(layout=DeviceLayout(weight_region_bytes=arena, kv_page_bytes=KV_PAGE_BYTES)),
        policy=PolicyConfig(scheduling=policy),
    )
    return simulate(workload, config, cost=profile.cost_model({m: m for m in spec.models})).summary()


def real(spec: LoadSpec, policy: str, run_dir: Path) -> tuple[dict, list]:
    """The load through the real CPU stack, as bench sched runs one policy: its figures
    (bench_sched_report.policy_figures) and the worker's TurnReports during the load."""
    from services.cli.bench_run import run_async
    from services.cli.bench_sched import PROMPT, _warm_up
    from services.cli.bench_sched_load import OpenLoopSpec, run_open_loop
    from services.cli.bench_sched_report import policy_figures
    from services.cli.bench_sched_turns import TurnWatch
    from services.cli.bench_serve_stack import ServeStack, write_models_catalog
    from shared.model_store import ModelStore

    store = ModelStore.from_env()
    paths = {m: store.path(m) for m in spec.models}
    run_dir.mkdir(parents=True, exist_ok=True)
    catalog = write_models_catalog(run_dir / "catalog.toml", paths, spec.ttft_s, spec.tbt_s)
    worker_args = ["--models", ",".join(spec.models), "--engine", "torch", "--threads", str(spec.worker_threads)]
    first = spec.models[0]
    (run_dir / policy).mkdir()
    stack = ServeStack(run_dir / policy, first, paths[first], worker_args, ["--scheduling", policy], catalog=catalog)

    async def load():
        async with TurnWatch(stack.nats.url, stack.WORKER_ID) as watch:
            sent = await run_open_loop(OpenLoopSpec(stack.base_url, PROMPT, spec.tokens, spec.drain_s), arrivals(spec))
        return sent, watch.reports

    try:
        stack.start()
        stack.wait_healthy(180.0)
        run_async(_warm_up(stack, spec.models, spec.tokens))
        sent, reports = run_async(load())
    finally:
        stack.stop()
    return policy_figures(policy, sent, spec.ttft_s, spec.tbt_s, None, spec.models), reports


def step_ratios(profile: EngineProfile, reports) -> dict[str, dict[str, float]]:
    """Per model, the seconds its decode and prefill steps took in the real run over what the
    profile predicts for the same steps (each turn's mean batch, context and prompt tokens)."""
    sums: dict[str, dict[str, list[float]]] = {}
    for r in reports:
        if r.model not in profile.models:
            continue
        fit = profile.models[r.model].fit
        s = sums.setdefault(r.model, {"decode": [0.0, 0.0], "prefill": [0.0, 0.0]})
        if r.decode_steps:
            batch = max(1, round(r.decode_tokens / r.decode_steps))
            s["decode"][0] += r.decode_s
            s["decode"][1] += r.decode_steps * fit.decode_s(batch, r.decode_context_tokens / r.decode_steps)
        if r.prefill_steps:
            s["prefill"][0] += r.prefill_s
            s["prefill"][1] += r.prefill_steps * fit.prefill_s(round(r.prefill_tokens / r.prefill_steps))
    return {
        m: {kind: round(real / predicted, 3) if predicted > 0 else 1.0 for kind, (real, predicted) in s.items()}
        for m, s in sums.items()
    }


def compare(spec: LoadSpec, policies: Sequence[str], profile_path: Path, run_dir: Path) -> dict:
    """Each policy for real, then simulated twice: with the profile as measured, and with each
    model's step times scaled by what the real run's TurnReports show (step_ratios)."""
    prompt = prompt_tokens(spec.models)
    profile = load_engine_profile(profile_path)
    out = {"load": spec.__dict__ | {"models": list(spec.models)}, "profile": str(profile_path), "policies": {}}
    for policy in policies:
        r, reports = real(spec, policy, run_dir)
        ratios = step_ratios(profile, reports)
        s = simulated(spec, policy, profile, prompt)
        c = simulated(spec, policy, profile.scaled(ratios), prompt)
        real_figures = ("requests", "completed", "mean_attainment", "strict_attainment", "ttft_ms", "tbt_ms")
        sim_figures = ("completed", "attainment", "strict_attainment", "ttft_p99_s", "tbt_p99_s", "switches")
        out["policies"][policy] = {
            "real": {k: r[k] for k in real_figures},
            "sim": {k: s[k] for k in sim_figures},
            "sim_calibrated": {k: c[k] for k in sim_figures},
            "step_ratios": ratios,
            "gap_points": round(100 * (s["attainment"] - r["mean_attainment"]), 2),
            "calibrated_gap_points": round(100 * (c["attainment"] - r["mean_attainment"]), 2),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    import tempfile

    parser = argparse.ArgumentParser(prog="python -m services.sim.cost_validate", description=__doc__.split("\n")[0])
    parser.add_argument("--profile", type=Path, required=True, help="engine cost profile (cost_engine.py measure)")
    parser.add_argument("--policy", default="token,request", help="comma-separated: token, request (default: both)")
    parser.add_argument("--duration-s", type=float, default=LoadSpec.duration_s)
    parser.add_argument("--rate", type=float, default=LoadSpec.rate)
    parser.add_argument("--seed", type=int, default=LoadSpec.seed)
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args(argv)
    spec = LoadSpec(rate=args.rate, duration_s=args.duration_s, seed=args.seed)
    policies = [p.strip() for p in args.policy.split(",") if p.strip()]
    with tempfile.TemporaryDirectory(prefix="tokenpool-validate-") as tmp:
        result = compare(spec, policies, args.profile, Path(tmp))
    text = json.dumps(result, indent=1)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
