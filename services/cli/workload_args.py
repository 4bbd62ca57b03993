"""The workload flags `tokenpool sim` and `tokenpool plan` share, and the Workload they name.

add_workload_arguments(parser)
workload = workload_from_args(args)   # raises SimError with a message for the user
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
AZURE_TRACE = DATA / "traces" / "azure_llm_code_2023.csv"
SERVEGEN_FOLDER = DATA / "traces" / "servegen" / "m-large"
SERVEGEN_WINDOW = (0.0, 3600.0)

SOURCES = """\
PATH: a CSV of the paper's (Request Time,Model Name,Input Length,Output Length), an Azure LLM
trace (TIMESTAMP,ContextTokens,GeneratedTokens; told apart by the header) or a folder of
ServeGen client files (chunk-<client>-trace.csv, chunk-<client>-dataset.json).
'azure': the Azure 2023 code trace in ../shared/data/traces; 'servegen': ServeGen's m-large
clients there; 'synthetic': Poisson/Gamma arrivals with Zipf popularity."""


def add_workload_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workload", required=True, metavar="PATH|synthetic|azure|servegen", help=SOURCES)
    g = p.add_argument_group("workload options (each names the sources it applies to)")
    g.add_argument(
        "--models", "--synthetic-models", type=positive_int, metavar="N",
        help="synthetic, Azure: models to spread the requests over (default: 8); "
        "ServeGen: the N clients with the most requests in the window (default: 8)",
    )  # fmt: skip
    g.add_argument(
        "--clients", type=client_ids, metavar="ID,ID,...",
        help="ServeGen: these clients (ids as in chunk-<id>-trace.csv) instead of the busiest N",
    )  # fmt: skip
    g.add_argument(
        "--zipf", type=float, metavar="S",
        help="synthetic, Azure: model k gets requests in proportion to 1/k**S; 0 = uniform (default: 1)",
    )  # fmt: skip
    g.add_argument(
        "--cv", type=positive_float,
        help="synthetic: coefficient of variation of the gaps between arrivals, Gamma-distributed; "
        "1 = Poisson (default: 1)",
    )  # fmt: skip
    g.add_argument(
        "--rate", type=positive_float, metavar="RPS",
        help="synthetic: total requests/s (default: 0.1 per model); paper CSV, Azure, ServeGen: "
        "scale the source's arrival rate so its mean over the window is RPS",
    )  # fmt: skip
    g.add_argument(
        "--rate-scale", type=positive_float, metavar="X",
        help="multiply the arrival rate by X: paper CSV and Azure replay X times as fast (times / X); "
        "ServeGen: every window's rate times X; synthetic: the rate times X",
    )  # fmt: skip
    g.add_argument("--duration", type=positive_float, metavar="S", help="synthetic: seconds of arrivals (default: 120)")
    g.add_argument(
        "--window", type=window, metavar="START:DURATION",
        help="only this span, e.g. 20h:1h, 0:1d, 600:300, 30m: (to the end); units s, m, h, d (default s). "
        "ServeGen: trace time 0 is midnight of its first day; its default is 0:1h",
    )  # fmt: skip
    g.add_argument(
        "--max-requests", type=positive_int, metavar="N", help="keep only the first N requests (after the window)"
    )
    g.add_argument(
        "--dataset", type=Path, metavar="PATH",
        help="ServeGen: draw every client's lengths from this chunk-<id>-dataset.json "
        "(default: the client's own, else the folder's lowest-numbered one)",
    )  # fmt: skip
    g.add_argument("--seed", type=int, help="synthetic, Azure, ServeGen: random seed (default: 0)")


APPLIES = {
    "models": {"synthetic", "azure", "servegen"},
    "clients": {"servegen"},
    "zipf": {"synthetic", "azure"},
    "cv": {"synthetic"},
    "duration": {"synthetic"},
    "dataset": {"servegen"},
    "seed": {"synthetic", "azure", "servegen"},
}
SHORT_NAMES = {"azure": "Azure", "servegen": "ServeGen", "synthetic": "synthetic"}
SOURCE_NAMES = {
    "paper": "a paper CSV",
    "azure": "an Azure trace",
    "servegen": "a ServeGen folder",
    "synthetic": "synthetic",
}


def workload_from_args(args: argparse.Namespace):
    from services.sim.errors import SimError
    from services.sim.workload import cut

    source, path = workload_source(args.workload)
    for flag, sources in APPLIES.items():
        if getattr(args, flag, None) is not None and source not in sources:
            names = " and ".join(SHORT_NAMES[s] for s in sorted(sources))
            raise SimError(
                f"--{flag.replace('_', '-')} applies to {names} workloads, not to {SOURCE_NAMES[source]} ({args.workload})"
            )
    if args.models is not None and args.clients is not None:
        raise SimError("give --models (the busiest N clients) or --clients (these clients), not both")
    workload = _load(source, path, args)
    return cut(workload, None, args.max_requests)


def workload_for_profile(workload, gpu_profile: str):
    """An engine profile (engine:PATH) prices only our own models: the market's models are
    dealt over them. The paper's GPUs price the 7B/9B/13B mix the loaders assign."""
    from services.sim.cost import ENGINE_PREFIX, gpu_profile as load_profile
    from services.sim.workload import priced_by

    if not gpu_profile.startswith(ENGINE_PREFIX):
        return workload
    return priced_by(workload, load_profile(gpu_profile).fits)


def _load(source: str, path: Path | None, args: argparse.Namespace):
    from services.sim.errors import SimError
    from services.sim.workload import cut, load_azure, load_csv, load_servegen, synthetic
    from services.sim.workload_files import AZURE_COLUMNS, PAPER_COLUMNS, csv_kind, header_of, missing_columns

    seed = 0 if args.seed is None else args.seed
    models = 8 if args.models is None else args.models
    zipf = 1.0 if args.zipf is None else args.zipf
    if source == "synthetic":
        rate = (0.1 * models if args.rate is None else args.rate) * (args.rate_scale or 1.0)
        duration = 120.0 if args.duration is None else args.duration
        workload = synthetic(models, rate, duration, zipf, seed=seed, cv=1.0 if args.cv is None else args.cv)
        return cut(workload, args.window)
    if source == "azure":
        return load_azure(path, models, zipf, args.window, args.rate_scale, args.rate, seed)
    if source == "servegen":
        clients = args.clients if args.clients is not None else models
        window = SERVEGEN_WINDOW if args.window is None else args.window
        return load_servegen(path, clients, window, args.rate_scale, args.rate, seed, args.dataset)
    if csv_kind(path) is None:
        problem = missing_columns(path, header_of(path), PAPER_COLUMNS)
        raise SimError(f"{problem} (the paper's format), or {','.join(AZURE_COLUMNS)} (an Azure trace)")
    return load_csv(path, window=args.window, rate_scale=args.rate_scale, rate_rps=args.rate)


def workload_source(text: str) -> tuple[str, Path | None]:
    """('paper' | 'azure' | 'servegen' | 'synthetic', the path to read)."""
    from services.sim.workload_files import csv_kind, require_file

    if text == "synthetic":
        return "synthetic", None
    if text == "azure":
        return "azure", AZURE_TRACE
    if text == "servegen":
        return "servegen", SERVEGEN_FOLDER
    path = Path(text)
    if path.is_dir():
        return "servegen", path
    # A CSV that is not Azure's is read as the paper's, whose reader names the columns it lacks.
    return csv_kind(require_file(path)) or "paper", path


UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def seconds(text: str) -> float:
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([smhd]?)\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a time such as 90, 90s, 30m, 1.5h or 1d")
    return float(match.group(1)) * UNITS[match.group(2)]


def window(text: str) -> tuple[float, float | None]:
    """'START:DURATION' -> (start s, duration s or None: to the end)."""
    start, sep, duration = text.partition(":")
    if not sep:
        raise argparse.ArgumentTypeError(f"{text!r} is not START:DURATION, such as 20h:1h or 0:1d")
    span = seconds(duration) if duration.strip() else None
    if span is not None and span <= 0:
        raise argparse.ArgumentTypeError(f"the window's duration must be positive, got {duration!r}")
    return (seconds(start) if start.strip() else 0.0), span


def client_ids(text: str) -> list[int]:
    try:
        ids = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of client ids such as 61,142"
        ) from None
    if not ids or min(ids) < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: client ids are whole numbers >= 0")
    return ids


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
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value
