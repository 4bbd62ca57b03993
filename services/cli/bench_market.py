"""``tokenpool bench market``: models per GPU under each policy on the paper's own workloads.

For each of Aegaeon's synth-N-0.1-1.0-1.0 workloads (N models, the 6:2:2 mix of 7B, 9B and
13B) it finds, per policy, the fewest simulated GPUs that reach the target attainment
(services/sim/plan.py), and prints models per GPU with token-level's ratio to request-level
and to dedicated serving, all from the same run. Then it times one simulated hour of an
80-model market, the simulator's own speed target.

tokenpool bench market --sizes 8,16,40,80 --json --out bench/results/market-h100.json --plot market.png
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from services.cli.bench_run import machine_brief, run_bench

PAPER_WORKLOADS = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "aegaeon" / "workloads"
SIZES = (8, 16, 24, 32, 40, 48, 56, 64, 72, 80)


def register(kinds) -> None:
    p = kinds.add_parser(
        "market",
        help="models per GPU of token-level, request-level and dedicated serving on the paper's workloads (simulated)",
        description="Plans each of the paper's synth-N workloads under the three policies and reports the "
        "models per GPU each reaches at the target attainment, with ratios, then times one simulated hour "
        "of an 80-model market.",
    )
    p.add_argument("--sizes", type=_sizes, default=SIZES, help="workload sizes N (default: 8,16,...,80)")
    p.add_argument("--workloads", type=Path, default=PAPER_WORKLOADS, help="folder of synth-N-0.1-1.0-1.0.csv")
    p.add_argument("--gpu-profile", default="H100", help="GPU cost profile (default: %(default)s)")
    p.add_argument("--target", type=float, default=0.9, help="attainment to reach (default: %(default)s)")
    p.add_argument("--hour", action=argparse.BooleanOptionalAction, default=True, help="time one simulated hour of 80 models")
    p.add_argument("--plot", type=Path, help="also draw models per GPU against models, per policy, to this PNG")
    p.add_argument("--out", type=Path, help="also write the JSON object to this file")
    p.add_argument("--json", action="store_true", help="print the JSON object instead of a summary")
    p.set_defaults(handler=lambda args: run_bench("market", lambda tmp: _run(args), args, _format))


def _sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of whole numbers") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: sizes must be positive")
    return sizes


def _run(args) -> dict:
    from services.sim.errors import SimError
    from services.sim.plan import plan
    from services.sim.run import SimConfig
    from services.sim.workload import load_csv

    base = SimConfig(gpu_profile=args.gpu_profile, drain_s=120.0)
    rows = []
    try:
        for n in args.sizes:
            workload = load_csv(args.workloads / f"synth-{n}-0.1-1.0-1.0.csv")
            started = time.perf_counter()
            plans = plan(workload, args.target, base)
            row = {"workload": workload.name, "models": len(workload.models), "requests": len(workload.arrivals)}
            row["policies"] = {name: p.as_dict() for name, p in plans.items()}
            row["token_vs_request"] = _ratio(plans["token"].models_per_gpu, plans["request"].models_per_gpu)
            row["token_vs_dedicated"] = _ratio(plans["token"].models_per_gpu, plans["dedicated"].models_per_gpu)
            row["wall_s"] = round(time.perf_counter() - started, 1)
            rows.append(row)
        hour = _hour(args.gpu_profile) if args.hour else None
        if args.plot:
            from services.sim.plots import models_per_gpu_plot

            models_per_gpu_plot(rows, args.plot, f"paper workloads, {args.gpu_profile}, {100 * args.target:g}% attainment")
    except SimError as e:
        raise RuntimeError(str(e)) from None
    token = [r["policies"]["token"]["models_per_gpu"] for r in rows]
    ratios = [r["token_vs_request"] for r in rows if r["token_vs_request"] is not None]
    return {
        "bench": "market",
        "machine": machine_brief(),
        "config": {"gpu_profile": args.gpu_profile, "target": args.target, "ttft_s": base.ttft_s, "tbt_s": base.tbt_s},
        "workloads": rows,
        "best_token_models_per_gpu": max((t for t in token if t), default=None),
        "median_token_vs_request": sorted(ratios)[len(ratios) // 2] if ratios else None,
        "hour_of_80_models": hour,
    }


def _hour(gpu_profile: str) -> dict:
    from services.sim.run import SimConfig, simulate
    from services.sim.workload import synthetic

    started = time.perf_counter()
    workload = synthetic(models=80, rate_rps=8.0, duration_s=3600.0, zipf=0.0, seed=0)
    result = simulate(workload, SimConfig(gpus=8, gpu_profile=gpu_profile))
    summary = result.summary()
    wall = time.perf_counter() - started
    return {
        "workload": workload.name,
        "requests": summary["requests"],
        "gpus": 8,
        "attainment": summary["attainment"],
        "simulated_s": summary["simulated_s"],
        "events": summary["events"],
        "wall_s": round(wall, 1),
        "target_wall_s": 60.0,
    }


def _ratio(a, b):
    return round(a / b, 3) if a and b else None


def _format(result: dict) -> str:
    lines = [f"{'workload':28s} {'dedicated':>10s} {'request':>16s} {'token':>16s} {'token/request':>14s}"]
    for r in result["workloads"]:
        cells = []
        for name in ("dedicated", "request", "token"):
            p = r["policies"][name]
            cells.append("none" if p["gpus"] is None else f"{p['gpus']} GPUs {p['models_per_gpu']:.2f}/GPU")
        lines.append(f"{r['workload']:28s} {cells[0]:>10s} {cells[1]:>16s} {cells[2]:>16s} {r['token_vs_request']!s:>14s}")
    lines.append(
        f"best token models/GPU {result['best_token_models_per_gpu']}, "
        f"median token/request {result['median_token_vs_request']}"
    )
    if result["hour_of_80_models"]:
        h = result["hour_of_80_models"]
        lines.append(
            f"one simulated hour of 80 models ({h['requests']} requests, {h['events']} events): "
            f"{h['wall_s']} s (target <= {h['target_wall_s']:g} s)"
        )
    return "\n".join(lines)
