"""``tokenpool bench fairness``: one tenant's burst in a model market, with and without the
router's tenant fairness (services/router/fair_queue.py) and its preemption
(services/router/preemption.py), simulated on the paper's workload.

The market's own traffic (Aegaeon's synth-N workload) comes from `--tenants` tenants, each
request from one drawn at random. At `--burst-at` one more tenant sends `--burst` requests at
once to `--burst-models` of the models (lengths drawn from the workload's). The default pool
(3 GPUs, 32 requests each: a CPU worker's default, and until 2026-11-22 every worker's) serves
the market alone at full attainment; the burst overfills it. The same arrivals run with tenant fairness, with fairness and
preemption, and with plain FCFS, and the market alone runs as the reference; the figures are SLO attainment and TTFT of
the market's requests that arrived from the burst on, and of the burst's.

tokenpool bench fairness --json --out bench/results/fairness-h100-sim.json
"""

from __future__ import annotations

import math
import random
from dataclasses import replace
from pathlib import Path

from services.cli.bench_market import PAPER_WORKLOADS
from services.router.config import PolicyConfig
from services.cli.bench_run import machine_brief, run_bench

BURST_TENANT = "burst"


def register(kinds) -> None:
    p = kinds.add_parser(
        "fairness",
        help="a tenant's burst in a simulated market: SLO attainment of everyone else, with and without tenant fairness",
        description="Runs the paper's synth workload plus one tenant's burst through the router's policy on "
        "simulated GPUs, with tenant fairness and with plain FCFS, and reports attainment and TTFT per side.",
    )
    p.add_argument("--workload", type=Path, default=PAPER_WORKLOADS / "synth-24-0.1-1.0-1.0.csv",
                   help="a paper workload CSV (default: synth-24-0.1-1.0-1.0)")
    p.add_argument("--gpus", type=int, default=3, help="simulated GPUs (default: %(default)s)")
    p.add_argument("--gpu-profile", default="H100", help="GPU cost profile (default: %(default)s)")
    p.add_argument("--tenants", type=int, default=20, help="tenants of the market's own traffic (default: %(default)s)")
    p.add_argument("--burst", type=int, default=400, help="requests of the burst (default: %(default)s)")
    p.add_argument("--burst-at", type=float, default=30.0, help="seconds into the workload (default: %(default)s)")
    p.add_argument("--burst-models", type=int, default=4, help="models the burst calls (default: %(default)s)")
    p.add_argument("--slots", type=int, default=32,
                   help="requests the router lets one GPU hold (default: %(default)s; at the 256 a CUDA "
                   "worker asks for, this burst never queues)")
    p.add_argument("--max-tenant-share", type=float, default=None,
                   help="also run fairness with this cap on one tenant's share of the slots (router --max-tenant-share)")
    p.add_argument("--max-round-load", type=float, default=PolicyConfig.max_round_load,
                   help="router --max-round-load for every run but the 'scattered' one, which has none "
                   "(default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="also write the JSON object to this file")
    p.add_argument("--json", action="store_true", help="print the JSON object instead of a summary")
    p.set_defaults(handler=lambda args: run_bench("fairness", lambda tmp: _run(args), args, _format))


def with_burst(workload, tenants: int, burst: int, burst_at: float, burst_models: int, seed: int):
    """The workload's arrivals, each from one of `tenants` tenants, plus the burst."""
    from services.sim.errors import SimError
    from services.sim.workload import make_workload

    if tenants < 1 or burst < 0 or burst_models < 1 or burst_at < 0:
        raise SimError("--tenants and --burst-models must be >= 1, --burst and --burst-at >= 0")
    rng = random.Random(seed)
    market = [replace(a, tenant=f"t{rng.randrange(tenants)}") for a in workload.arrivals]
    targets = sorted(workload.models)[:burst_models]
    lengths = [(a.input_tokens, a.output_tokens) for a in workload.arrivals]
    bursting = [
        replace(workload.arrivals[0], time_s=burst_at + i * 1e-4, model=targets[i % len(targets)],
                input_tokens=inp, output_tokens=out, tenant=BURST_TENANT)
        for i, (inp, out) in enumerate(rng.choice(lengths) for _ in range(burst))
    ]
    return make_workload(f"{workload.name}+burst{burst}", market + bursting, workload.architectures)


def _run(args) -> dict:
    from services.router.slo.attainment import summarize
    from services.sim.errors import SimError
    from services.sim.run import SimConfig, policy_config, simulate
    from services.sim.cost import CostModel
    from services.sim.workload import load_csv

    try:
        base = load_csv(args.workload)
        workload = with_burst(base, args.tenants, args.burst, args.burst_at, args.burst_models, args.seed)
        cost = CostModel.for_models(args.gpu_profile, workload.architectures)
        alone = with_burst(base, args.tenants, 0, args.burst_at, args.burst_models, args.seed)
        load = args.max_round_load
        runs = [("alone", True, alone, 1.0, False, load), ("fair", True, workload, 1.0, False, load),
                ("fcfs", False, workload, 1.0, False, load), ("preempt", True, workload, 1.0, True, load),
                ("scattered", True, workload, 1.0, False, math.inf)]
        if args.max_tenant_share is not None:
            runs.append(("capped", True, workload, args.max_tenant_share, False, load))
        sides = {}
        for name, fair, arrivals, share, preempt, load in runs:
            try:
                policy = replace(policy_config(cost, "token"), tenant_fairness=fair, tenant_preemption=preempt,
                                 max_running_per_worker=args.slots, max_tenant_share=share, max_round_load=load)
            except ValueError as e:
                raise SimError(str(e)) from None
            result = simulate(arrivals, SimConfig(gpus=args.gpus, gpu_profile=args.gpu_profile, drain_s=600.0,
                                                  policy=policy), cost)
            groups = {"market": [], "burst": [], "market_before_burst": []}
            for record in result.records:
                a = record.arrival
                key = "burst" if a.tenant == BURST_TENANT else "market" if a.time_s >= args.burst_at else "market_before_burst"
                groups[key].append(result.slo(record))
            sides[name] = {key: _stats(summarize(slos), len(slos)) for key, slos in groups.items()}
            sides[name]["all"] = {k: result.summary()[k] for k in ("requests", "completed", "rejected", "attainment")}
    except SimError as e:
        raise RuntimeError(str(e)) from None
    fair, fcfs = sides["fair"], sides["fcfs"]
    return {
        "bench": "fairness",
        "machine": machine_brief(),
        "config": {
            "workload": base.name, "gpus": args.gpus, "gpu_profile": args.gpu_profile, "tenants": args.tenants,
            "burst": args.burst, "burst_at_s": args.burst_at, "burst_models": args.burst_models, "seed": args.seed,
            "slots_per_gpu": args.slots, "max_tenant_share": args.max_tenant_share,
            "max_round_load": args.max_round_load,
        },
        "market_alone": sides["alone"]["market"],
        "fair": fair,
        "fcfs": fcfs,
        "preempt": sides["preempt"],
        "scattered": sides["scattered"],
        **({"capped": sides["capped"]} if "capped" in sides else {}),
        "market_attainment_fair_over_fcfs": _ratio(fair["market"]["attainment"], fcfs["market"]["attainment"]),
        "market_attainment_preempt_over_fcfs": _ratio(sides["preempt"]["market"]["attainment"], fcfs["market"]["attainment"]),
        "burst_attainment_fair_over_fcfs": _ratio(fair["burst"]["attainment"], fcfs["burst"]["attainment"]),
        "market_attainment_fair_over_scattered": _ratio(fair["market"]["attainment"], sides["scattered"]["market"]["attainment"]),
    }


def _stats(s, n: int) -> dict:
    r = lambda v: None if v is None else round(v, 4)  # noqa: E731
    return {"requests": n, "attainment": r(s.mean_attainment), "strict_attainment": r(s.strict_fraction),
            "ttft_p50_s": r(s.ttft_p50_s), "ttft_p99_s": r(s.ttft_p99_s)}


def _ratio(a, b):
    return round(a / b, 3) if a is not None and b else None


def _format(r: dict) -> str:
    c = r["config"]
    lines = [
        f"tenant fairness - {c['workload']} on {c['gpus']} simulated {c['gpu_profile']}, {c['tenants']} tenants, "
        f"a burst of {c['burst']} requests to {c['burst_models']} models at {c['burst_at_s']:g} s, "
        f"{c['slots_per_gpu']} requests per GPU",
        f"{'':28}{'requests':>9}{'attainment':>12}{'strict':>8}{'TTFT p50':>10}{'TTFT p99':>10}",
    ]
    for side in ("fair", "preempt", "fcfs", "capped", "scattered"):
        if side not in r:
            continue
        for group in ("market_before_burst", "market", "burst"):
            lines.append(_row(f"{side} {group.replace('_', ' ')}", r[side][group]))
    lines.append(_row("market alone (no burst)", r["market_alone"]))
    lines.append(f"market from the burst on: fair / FCFS attainment {r['market_attainment_fair_over_fcfs']} "
                 f"(with preemption {r['market_attainment_preempt_over_fcfs']}); "
                 f"the burst's own: {r['burst_attainment_fair_over_fcfs']}; fair / fair without a round-load "
                 f"limit ('scattered'): {r['market_attainment_fair_over_scattered']}")
    return "\n".join(lines)


def _row(label: str, g: dict) -> str:
    return (f"{label:28}{g['requests']:>9}{_f(g['attainment']):>12}{_f(g['strict_attainment']):>8}"
            f"{_f(g['ttft_p50_s'], 's'):>10}{_f(g['ttft_p99_s'], 's'):>10}")


def _f(v, unit: str = "") -> str:
    return "-" if v is None else f"{v:.3f}{unit}"
