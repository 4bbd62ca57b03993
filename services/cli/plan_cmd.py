"""``tokenpool plan``: the fewest GPUs with which each policy reaches a target SLO attainment.

tokenpool plan --workload ../shared/data/aegaeon/workloads/synth-40-0.1-1.0-1.0.csv --gpu-profile H100 --target 0.9 --json
tokenpool plan --workload synthetic --models 24 --plot gpus.png
tokenpool plan --workload servegen --models 80 --window 0:1d --rate 5 --autoscale --json
"""

from __future__ import annotations

import argparse
import json
import sys

from services.cli.autoscale_args import add_autoscale_arguments, autoscale_config
from services.cli.workload_args import (
    add_workload_arguments,
    positive_float,
    workload_for_profile,
    workload_from_args,
)

POLICIES = ("dedicated", "request", "token")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "plan",
        help="find, per policy, the fewest simulated GPUs that reach a target SLO attainment",
        description="Simulates the workload on pools of growing size under dedicated serving (one model "
        "per GPU), request-level scheduling (one model at a time per GPU, LRU weights) and tokenpool's "
        "token-level scheduling, and prints the fewest GPUs with which each reaches the target attainment.",
    )
    add_workload_arguments(p)
    p.add_argument("--gpu-profile", default="H100", help="GPU cost profile: H100, H800, H20 or A100 (default: %(default)s)")
    p.add_argument(
        "--target", type=_fraction, default=0.9, help="SLO attainment to reach, 0..1 (default: %(default)s)"
    )
    p.add_argument(
        "--policies", type=_policies, default=POLICIES, metavar="P,P,...",
        help=f"policies to plan for, comma-separated (default: {','.join(POLICIES)})",
    )  # fmt: skip
    p.add_argument("--ttft", type=positive_float, default=10.0, help="TTFT objective, seconds (default: %(default)s)")
    p.add_argument("--tbt", type=positive_float, default=0.1, help="TBT objective, seconds (default: %(default)s)")
    p.add_argument(
        "--drain", type=positive_float, default=120.0,
        help="virtual seconds after the last arrival before unfinished requests count as lost; "
        "short keeps overloaded probes quick (default: %(default)s)",
    )  # fmt: skip
    p.add_argument("--plot", metavar="PNG", help="also draw the GPUs each policy needs to this PNG file "
                   "(with --autoscale: GPUs in use over time)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a summary")
    add_autoscale_arguments(p)
    p.set_defaults(handler=plan)


def _fraction(text: str) -> float:
    value = positive_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"must be a fraction in (0, 1], got {text}")
    return value


def _policies(text: str) -> tuple[str, ...]:
    names = tuple(p.strip() for p in text.split(",") if p.strip())
    unknown = [p for p in names if p not in POLICIES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown policy {', '.join(unknown) or '(none)'}; known: {', '.join(POLICIES)}")
    return names


def plan(args: argparse.Namespace) -> int:
    from services.sim import plan as planner
    from services.sim.errors import SimError
    from services.sim.run import SimConfig

    def progress(policy: str, gpus: int, attainment: float) -> None:
        if not args.json:
            print(f"  {policy}: {gpus} GPUs -> attainment {100 * attainment:.1f}%", file=sys.stderr, flush=True)

    try:
        autoscale = autoscale_config(args, target=args.target)
        if autoscale is not None:
            return _plan_autoscaled(args, autoscale)
        workload = workload_for_profile(workload_from_args(args), args.gpu_profile)
        base = SimConfig(gpu_profile=args.gpu_profile, ttft_s=args.ttft, tbt_s=args.tbt, drain_s=args.drain)
        plans = planner.plan(workload, args.target, base, args.policies, progress=progress)
        report = _head(args, workload) | {
            "policies": {name: p.as_dict() for name, p in plans.items()},
            "ratios": _ratios(plans),
        }
        if args.plot:
            from services.sim.plots import gpus_plot

            title = f"{workload.name}: GPUs for {100 * args.target:g}% attainment ({args.gpu_profile})"
            gpus_plot(report["policies"], args.plot, title)
    except SimError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(report) if args.json else _text(report))
    return 0


def _head(args: argparse.Namespace, workload) -> dict:
    """What every plan report starts with: the target, the workload and the SLOs."""
    return {
        "target": args.target,
        "workload": workload.name,
        "models": len(workload.models),
        "requests": len(workload.arrivals),
        "gpu_profile": args.gpu_profile,
        "ttft_slo_s": args.ttft,
        "tbt_slo_s": args.tbt,
    }


def _ratios(plans) -> dict:
    """token's models per GPU over each other policy's (None where either found no pool)."""
    token = plans.get("token")
    out = {}
    for name, other in plans.items():
        if name != "token" and token is not None:
            a, b = token.models_per_gpu, other.models_per_gpu
            out[f"token_vs_{name}_models_per_gpu"] = round(a / b, 3) if a and b else None
    return out


def _head_line(report: dict, span: str = "") -> str:
    """The first line of a text report: that head in words (`span`: the time it covers)."""
    return (
        f"{report['workload']}: {report['requests']} requests for {report['models']} models{span} on "
        f"{report['gpu_profile']}, target attainment {100 * report['target']:g}% "
        f"(TTFT {report['ttft_slo_s']:g} s, TBT {report['tbt_slo_s']:g} s)"
    )


def _text(report: dict) -> str:
    lines = [_head_line(report)]
    for name, p in report["policies"].items():
        if p["gpus"] is None:
            lines.append(f"  {name:9s} no pool reached the target")
        else:
            lines.append(
                f"  {name:9s} {p['gpus']:4d} GPUs  {p['models_per_gpu']:6.2f} models/GPU  "
                f"attainment {100 * p['attainment']:.1f}%"
            )
    if report["ratios"]:
        lines.append("  " + "  ".join(f"{k} {v}" for k, v in report["ratios"].items()))
    return "\n".join(lines)


def _plan_autoscaled(args: argparse.Namespace, autoscale) -> int:
    """GPU-hours per policy over the workload's span, token and request under the autoscaler."""
    from services.sim import plan as planner
    from services.sim.errors import SimError
    from services.sim.run import SimConfig

    def progress(policy: str, p: dict) -> None:
        if not args.json:
            print(f"  {policy}: {_hours_line(p)} ({p['wall_s']} s)", file=sys.stderr, flush=True)

    try:
        if not {"token", "request"} & set(args.policies):
            raise SimError("--autoscale sizes the token and request pools; --policies has neither "
                           "(dedicated keeps its GPUs all along)")  # fmt: skip
        workload = workload_for_profile(workload_from_args(args), args.gpu_profile)
        base = SimConfig(
            gpus=autoscale.scaling.min_workers, gpu_profile=args.gpu_profile, ttft_s=args.ttft, tbt_s=args.tbt,
            drain_s=args.drain, autoscale=autoscale,
        )  # fmt: skip
        policies = planner.plan_autoscaled(workload, args.target, base, args.policies, progress=progress)
        report = _head(args, workload) | {
            "hours": round(workload.duration_s / 3600, 3),
            "autoscale": _autoscale_settings(autoscale),
            "policies": policies,
            "missed_target": [name for name, p in policies.items() if not p["target_met"]],
            "ratios": _hours_ratios(policies),
        }
        if args.plot:
            from services.sim.plots_autoscale import gpus_over_time_plot

            title = f"{workload.name}\nGPUs in use on {args.gpu_profile}, token and request autoscaled"
            gpus_over_time_plot(policies, args.plot, title)
    except SimError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(report) if args.json else _hours_text(report))
    return 0


def _autoscale_settings(autoscale) -> dict:
    import dataclasses

    return {
        "scaling": dataclasses.asdict(autoscale.scaling),
        "tick_s": autoscale.tick_s,
        "window_s": autoscale.window_s,
        "boot_s": autoscale.boot_s,
        "host_bytes": autoscale.host_bytes,
    }


def _hours_ratios(policies: dict) -> dict:
    """GPU-hours of token over dedicated and over request, and of request over dedicated."""
    out = {}
    for a, b in (("token", "dedicated"), ("token", "request"), ("request", "dedicated")):
        if a in policies and b in policies:
            x, y = policies[a]["gpu_hours"], policies[b]["gpu_hours"]
            out[f"{a}_vs_{b}_gpu_hours"] = round(x / y, 4) if x is not None and y else None
    return out


def _hours_line(p: dict) -> str:
    if p["gpu_hours"] is None:
        return p.get("note", "no pool reached the target")
    line = (f"{p['gpu_hours']:.4g} GPU-hours (peak {p['peak_gpus']}, mean {p['mean_gpus']:.2f} GPUs), "
            f"attainment {100 * p['attainment']:.1f}%")  # fmt: skip
    return line if p["target_met"] else line + " -- MISSED the target"


def _hours_text(report: dict) -> str:
    lines = [_head_line(report, f" over {report['hours']:g} h") + "; token and request autoscaled"]
    for name, p in report["policies"].items():
        lines.append(f"  {name:9s} {_hours_line(p)}")
    if report["ratios"]:
        lines.append("  " + "  ".join(f"{k} {v}" for k, v in report["ratios"].items()))
    if report["missed_target"]:
        lines.append(f"  missed the target: {', '.join(report['missed_target'])}")
    return "\n".join(lines)
