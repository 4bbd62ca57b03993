"""The workload flags `tokenpool sim` and `tokenpool plan` share, and the Workload they name.

add_workload_arguments(parser)
workload = workload_from_args(args)   # raises SimError with a message for the user
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_workload_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--workload",
        required=True,
        help="CSV file (Request Time,Model Name,Input Length,Output Length) or 'synthetic'",
    )
    g = p.add_argument_group("synthetic workload (--workload synthetic)")
    g.add_argument(
        "--synthetic-models",
        type=positive_int,
        default=8,
        help="models (default: %(default)s)",
    )
    g.add_argument(
        "--rate", type=positive_float, help="total requests/s (default: 0.1 per model)"
    )
    g.add_argument(
        "--duration",
        type=positive_float,
        default=120.0,
        help="seconds of arrivals (default: %(default)s)",
    )
    g.add_argument(
        "--zipf",
        type=float,
        default=1.0,
        help="popularity exponent, 0 = uniform (default: %(default)s)",
    )
    g.add_argument(
        "--seed", type=int, default=0, help="random seed (default: %(default)s)"
    )


def workload_from_args(args: argparse.Namespace):
    from services.sim.workload import load_csv, synthetic

    if args.workload == "synthetic":
        return synthetic(
            args.synthetic_models, args.rate, args.duration, args.zipf, seed=args.seed
        )
    return load_csv(Path(args.workload))


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value
