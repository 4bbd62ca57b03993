"""The `--autoscale` flags of `tokenpool sim` and `tokenpool plan`, and the AutoscaleConfig they name.

add_autoscale_arguments(parser)
config = autoscale_config(args, target=0.9)   # None without --autoscale; SimError for a bad flag
"""

from __future__ import annotations

import argparse

from services.cli.workload_args import positive_float


def add_autoscale_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("autoscaling (the autoscaler's planner sizes the token and request pools)")
    g.add_argument(
        "--autoscale", action="store_true",
        help="run the autoscaler's planner (services/autoscaler/decide.py) every few simulated seconds: "
        "it adds workers, drains and releases them, and the GPUs count from when they are asked for "
        "until they are released",
    )  # fmt: skip
    g.add_argument(
        "--scaling", action="append", default=[], metavar="NAME=VALUE",
        help="a planner setting (services/autoscaler/scaling_config.py), e.g. fill=0.7; the simulator's "
        "defaults: scale_up_cooldown_s=60, target_attainment = the run's target + 0.05",
    )  # fmt: skip
    g.add_argument(
        "--boot-delay", type=non_negative_float, metavar="S",
        help="seconds from asking for a worker to its first report (default: 45: process and CUDA start, "
        "first weights from disk)",
    )  # fmt: skip
    g.add_argument(
        "--host-memory", type=positive_float, metavar="GB",
        help="host memory each worker may fill with weights, GB (default: 256, a DGX H100's 2 TB over 8 GPUs)",
    )  # fmt: skip


def autoscale_config(args: argparse.Namespace, target: float = 0.9):
    from services.autoscaler.scaling_args import scaling_config
    from services.sim.autoscale import AutoscaleConfig, sim_scaling_defaults
    from services.sim.errors import SimError

    if not args.autoscale:
        given = [f for f, v in (("--scaling", args.scaling), ("--boot-delay", args.boot_delay),
                                ("--host-memory", args.host_memory)) if v not in (None, [])]  # fmt: skip
        if given:
            raise SimError(f"{', '.join(given)} set(s) the autoscaler: add --autoscale")
        return None
    try:
        scaling = scaling_config(args.scaling, **sim_scaling_defaults(target))
    except ValueError as e:
        raise SimError(str(e)) from None
    extra = {}
    if args.boot_delay is not None:
        extra["boot_s"] = args.boot_delay
    if args.host_memory is not None:
        extra["host_bytes"] = int(args.host_memory * 1e9)
    return AutoscaleConfig(scaling=scaling, **extra)


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text}")
    return value
