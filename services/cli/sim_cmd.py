"""``tokenpool sim``: one workload through the router's policy on simulated GPUs, in virtual time.

tokenpool sim --workload ../shared/data/aegaeon/workloads/synth-8-0.1-1.0-1.0.csv --gpus 2 --policy token --json
tokenpool sim --workload synthetic --synthetic-models 8 --duration 120 --gpus 1 --policy request
tokenpool sim --workload ../shared/data/aegaeon/workloads/synth-16-0.1-1.0-1.0.csv --gpus 2 --compare --json
"""

from __future__ import annotations

import argparse
import json
import sys
from services.cli.workload_args import (
    add_workload_arguments,
    positive_float,
    positive_int,
    workload_from_args,
)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "sim",
        help="simulate a workload on N GPUs under the router's policy and print SLO attainment",
        description="Runs a workload (one of the paper's CSVs, or a synthetic Poisson/Zipf one) through "
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
        help="GPU cost profile (default: %(default)s; known: H100)",
    )
    p.add_argument(
        "--policy", choices=("token", "request"), default="token",
        help="token: turns with SLO-derived quotas; request: one model at a time per GPU (default: %(default)s)",
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
        help="run token and request scheduling on the same workload and print both, with token/request ratios",
    )  # fmt: skip
    p.add_argument(
        "--json", action="store_true", help="print one JSON object instead of a summary"
    )
    p.set_defaults(handler=sim)


def sim(args: argparse.Namespace) -> int:
    from services.sim.errors import SimError
    from services.sim.run import SimConfig, simulate

    try:
        workload = workload_from_args(args)
        summaries = {}
        for policy in ("token", "request") if args.compare else (args.policy,):
            config = SimConfig(
                gpus=args.gpus,
                prefill_gpus=args.prefill_gpus,
                gpu_profile=args.gpu_profile,
                scheduling=policy,
                ttft_s=args.ttft,
                tbt_s=args.tbt,
                drain_s=args.drain,
            )
            summaries[policy] = simulate(workload, config).summary()
    except SimError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not args.compare:
        [summary] = summaries.values()
        print(json.dumps(summary) if args.json else _text(summary))
        return 0
    ratios = _ratios(summaries["token"], summaries["request"])
    if args.json:
        print(json.dumps({**summaries, "ratios": ratios}))
    else:
        print(
            "\n".join(
                [
                    _text(summaries["token"]),
                    _text(summaries["request"]),
                    f"token/request: {ratios}",
                ]
            )
        )
    return 0


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
        ]
    )
