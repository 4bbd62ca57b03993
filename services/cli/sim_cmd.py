"""``tokenpool sim``: one workload through the router's policy on simulated GPUs, in virtual time.

tokenpool sim --workload ../shared/data/aegaeon/workloads/synth-8-0.1-1.0-1.0.csv --gpus 2 --policy token --json
tokenpool sim --workload synthetic --synthetic-models 8 --duration 120 --gpus 1 --policy request
tokenpool sim --workload ../shared/data/aegaeon/workloads/synth-16-0.1-1.0-1.0.csv --gpus 2 --compare --json
tokenpool sim --workload servegen --models 80 --window 20h:1h --rate 5 --policy token --autoscale
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from services.cli.autoscale_args import add_autoscale_arguments, autoscale_config
from services.cli.workload_args import (
    add_workload_arguments,
    positive_float,
    positive_int,
    workload_for_profile,
    workload_from_args,
)

POLICIES = ("token", "request", "dedicated")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "sim",
        help="simulate a workload on N GPUs under the router's policy and print SLO attainment",
        description="Runs a workload (the paper's CSVs, the Azure or ServeGen traces, or a synthetic one) through "
        "the router's real scheduling policy with simulated GPU workers whose step, switch and KV swap "
        "times come from a cost model (services/sim/cost.py), and prints SLO attainment and counters.",
    )
    add_workload_arguments(p)
    p.add_argument(
        "--gpus",
        type=positive_int,
        default=1,
        help="simulated GPUs, each one worker (default: %(default)s)",
    )
    p.add_argument(
        "--prefill-gpus", type=int, default=0,
        help="disaggregated mode: this many of the GPUs only prefill, the rest decode (default: %(default)s)",
    )  # fmt: skip
    p.add_argument(
        "--gpu-profile",
        default="H100",
        help="GPU cost profile: H100, H800, H20 or A100 (fits of the paper's profiles), or engine:PATH "
        "(our engine's measured costs, `python -m services.sim.cost_engine measure`) (default: %(default)s)",
    )
    p.add_argument(
        "--policy", choices=POLICIES, default="token",
        help="token: turns with SLO-derived quotas; request: one model at a time per GPU, LRU weights; "
        "dedicated: one model per GPU (default: %(default)s)",
    )  # fmt: skip
    p.add_argument(
        "--ttft",
        type=positive_float,
        default=10.0,
        help="TTFT objective in seconds (default: %(default)s)",
    )
    p.add_argument(
        "--tbt",
        type=positive_float,
        default=0.1,
        help="TBT objective in seconds (default: %(default)s)",
    )
    p.add_argument(
        "--drain", type=float, default=600.0,
        help="virtual seconds after the last arrival before unfinished requests are given up (default: %(default)s)",
    )  # fmt: skip
    p.add_argument(
        "--compare", action="store_true",
        help="run token, request and dedicated on the same workload and pool and print all three, "
        "with token/request and token/dedicated ratios",
    )  # fmt: skip
    p.add_argument(
        "--plot", metavar="PNG",
        help="also draw attainment against the number of models (the pool serving the workload's first "
        "k models, for growing k) to this PNG file, for the policy run (all three with --compare)",
    )  # fmt: skip
    p.add_argument("--plot-points", type=positive_int, default=6, help="market sizes on the plot (default: %(default)s)")
    p.add_argument(
        "--json", action="store_true", help="print one JSON object instead of a summary"
    )
    add_autoscale_arguments(p)
    p.set_defaults(handler=sim)


def sim(args: argparse.Namespace) -> int:
    from services.sim.errors import SimError
    from services.sim.run import SimConfig, simulate

    policies = POLICIES if args.compare else (args.policy,)
    try:
        autoscale = autoscale_config(args)
        if autoscale is not None and (args.compare or args.plot):
            raise SimError("--autoscale runs one policy: leave out --compare and --plot "
                           "(tokenpool plan --autoscale compares the policies' GPU-hours)")  # fmt: skip
        workload = workload_for_profile(workload_from_args(args), args.gpu_profile)
        config = SimConfig(
            gpus=args.gpus,
            prefill_gpus=args.prefill_gpus,
            gpu_profile=args.gpu_profile,
            scheduling=args.policy,
            ttft_s=args.ttft,
            tbt_s=args.tbt,
            drain_s=args.drain,
            autoscale=autoscale,
        )
        summaries = {}
        for policy in policies:
            # dedicated serving has no prefill-only GPUs: it runs on the whole pool
            prefill = 0 if policy == "dedicated" else args.prefill_gpus
            run = dataclasses.replace(config, scheduling=policy, prefill_gpus=prefill)
            summaries[policy] = simulate(workload, run).summary()
        if args.plot:
            _plot(workload, config, policies, args)
    except SimError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not args.compare:
        [summary] = summaries.values()
        print(json.dumps(summary) if args.json else _text(summary))
        return 0
    ratios = _ratios(summaries["token"], summaries["request"])
    vs_dedicated = _ratios(summaries["token"], summaries["dedicated"])
    if args.json:
        print(json.dumps({**summaries, "ratios": ratios, "ratios_vs_dedicated": vs_dedicated}))
    else:
        texts = [_text(summaries[p]) for p in policies]
        print("\n".join([*texts, f"token/request: {ratios}", f"token/dedicated: {vs_dedicated}"]))
    return 0


def _plot(workload, config, policies, args) -> None:
    from services.sim.plots import attainment_plot
    from services.sim.sweep import attainment_by_models

    curves = attainment_by_models(workload, config, policies, args.plot_points)
    title = f"{workload.name} on {config.gpus} x {config.gpu_profile}"
    attainment_plot(curves, args.plot, title)


def _ratios(token: dict, request: dict) -> dict:
    """token / request for the figures where both are numbers (None where request's is 0)."""
    out = {}
    for key in (
        "attainment",
        "strict_attainment",
        "ttft_p99_s",
        "tbt_p99_s",
        "switches",
    ):
        a, b = token.get(key), request.get(key)
        if isinstance(a, (int, float)) and isinstance(b, (int, float)):
            out[key] = round(a / b, 3) if b else None
    return out


def _text(s: dict) -> str:
    def pct(v):
        return "n/a" if v is None else f"{100 * v:.1f}%"

    return "\n".join(
        [
            f"{s['workload']}: {s['requests']} requests for {s['models']} models on {s['gpus']} x {s['gpu_profile']}, "
            f"policy {s['policy']} (TTFT {s['ttft_slo_s']:g} s, TBT {s['tbt_slo_s']:g} s)",
            f"  attainment {pct(s['attainment'])}  strict {pct(s['strict_attainment'])}  "
            f"TTFT p99 {s['ttft_p99_s']} s  TBT p99 {s['tbt_p99_s']} s",
            f"  completed {s['completed']}  rejected {s['rejected']}  failed {s['failed']}  unfinished {s['unfinished']}",
            f"  switches {s['switches']} ({s['switch_s']} s)  weight copies {s['weight_copies']}  "
            f"turns {s['turns']}  GPU busy {pct(s['gpu_busy_fraction'])}",
            f"  {s['simulated_s']} s simulated in {s['wall_s']} s ({s['events']} events)",
            *_autoscaled_text(s),
        ]
    )


def _autoscaled_text(s: dict) -> list[str]:
    if "gpu_hours" not in s:
        return []
    return [
        f"  autoscaled from {s['gpus']} GPU(s): {s['gpu_hours']} GPU-hours, peak {s['peak_gpus']}, "
        f"mean {s['mean_gpus']} GPUs, {s['gpus_at_end']} at the end; planner actions {s['actions']}, "
        f"requests moved {s['moves']}"
    ]
