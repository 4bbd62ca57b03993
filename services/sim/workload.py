"""Workloads: when each request arrives, for which model, with how many prompt and output tokens.

    workload = load_csv(Path("../shared/data/aegaeon/workloads/synth-8-0.1-1.0-1.0.csv"))
    workload = synthetic(models=8, rate_rps=0.8, duration_s=120, seed=1)

The paper's CSVs (Aegaeon, SOSP'25 artifact) have the header
`Request Time,Model Name,Input Length,Output Length`, times as HH:MM:SS.fff from the start.
Their models are placeholders (synth_model_00, ...); as in the paper they stand for a 6:2:2
mix of 7B, 9B and 13B models. `size_mix` deals the sizes out in a repeating pattern of ten,
interleaved (7B 7B 9B 7B 13B 7B 7B 9B 7B 13B), so that small markets get the mix too.
"""

from __future__ import annotations

import csv
import math
import random
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from services.sim.cost import ARCHITECTURES
from services.sim.errors import SimError

CSV_COLUMNS = ("Request Time", "Model Name", "Input Length", "Output Length")
SIZE_PATTERN = (
    "qwen2.5-7b", "qwen2.5-7b", "yi-1.5-9b", "qwen2.5-7b", "llama-2-13b",
    "qwen2.5-7b", "qwen2.5-7b", "yi-1.5-9b", "qwen2.5-7b", "llama-2-13b",
)  # fmt: skip
"""6 x 7B, 2 x 9B, 2 x 13B in every ten models, in model-name order."""


@dataclass(frozen=True)
class Arrival:
    time_s: float
    """Seconds from the start of the workload."""
    model: str
    input_tokens: int
    output_tokens: int
    """Tokens the request generates (the simulator ignores EOS: it runs to this length)."""


@dataclass(frozen=True)
class Workload:
    name: str
    arrivals: tuple[Arrival, ...]
    """In time order."""
    architectures: dict[str, str]
    """Each model's architecture (a key of cost.ARCHITECTURES): what its bytes and steps cost."""

    @property
    def models(self) -> list[str]:
        return list(self.architectures)

    @property
    def duration_s(self) -> float:
        return self.arrivals[-1].time_s if self.arrivals else 0.0


def natural_key(name: str) -> tuple:
    """Sorts synth_model_2 before synth_model_10."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name))


def size_mix(models: Iterable[str]) -> dict[str, str]:
    """Model -> architecture, the 6:2:2 mix of 7B, 9B and 13B over the models in name order."""
    ordered = sorted(set(models), key=natural_key)
    return {m: SIZE_PATTERN[i % len(SIZE_PATTERN)] for i, m in enumerate(ordered)}


def make_workload(name: str, arrivals: Iterable[Arrival], architectures: dict[str, str] | None = None) -> Workload:
    ordered = tuple(sorted(arrivals, key=lambda a: a.time_s))
    if not ordered:
        raise SimError(f"workload {name!r} has no requests")
    archs = architectures if architectures is not None else size_mix(a.model for a in ordered)
    missing = sorted({a.model for a in ordered} - set(archs))
    if missing:
        raise SimError(f"workload {name!r}: no architecture given for models {', '.join(missing)}")
    unknown = sorted({a for a in archs.values() if a not in ARCHITECTURES})
    if unknown:
        raise SimError(
            f"workload {name!r}: unknown architectures {', '.join(unknown)}; known: {', '.join(ARCHITECTURES)}"
        )
    ordered_archs = {m: archs[m] for m in sorted(archs, key=natural_key)}
    return Workload(name, ordered, ordered_archs)


# ---- the paper's CSVs -----------------------------------------------------------------


def load_csv(path: Path) -> Workload:
    path = Path(path)
    if not path.is_file():
        raise SimError(
            f"workload file {path} does not exist" if not path.exists() else f"workload {path} is not a file"
        )
    with path.open(newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise SimError(f"workload file {path} is empty; expected the header {','.join(CSV_COLUMNS)}")
        header = [h.strip() for h in header]
        missing = [c for c in CSV_COLUMNS if c not in header]
        if missing:
            raise SimError(
                f"workload file {path}: header lacks column(s) {', '.join(missing)}; expected {','.join(CSV_COLUMNS)}"
            )
        where = [header.index(c) for c in CSV_COLUMNS]
        arrivals = []
        for row in reader:
            line = reader.line_num
            if not row or all(not cell.strip() for cell in row):
                continue
            if len(row) < len(header):
                raise SimError(f"{path}, line {line}: {len(row)} fields, expected {len(header)} ({','.join(header)})")
            time_text, model, input_text, output_text = (row[i].strip() for i in where)
            if not model:
                raise SimError(f"{path}, line {line}: the Model Name is empty")
            arrivals.append(
                Arrival(
                    _parse_time(time_text, path, line),
                    model,
                    _parse_count(input_text, "Input Length", path, line),
                    _parse_count(output_text, "Output Length", path, line),
                )
            )
    return make_workload(path.name, arrivals)


def _parse_time(text: str, path: Path, line: int) -> float:
    """HH:MM:SS(.fff), MM:SS(.fff) or plain seconds."""
    try:
        seconds = 0.0
        for part in text.split(":"):
            seconds = seconds * 60 + float(part)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds < 0:
        raise SimError(f"{path}, line {line}: Request Time {text!r} is not a time such as 00:01:02.500")
    return seconds


def _parse_count(text: str, column: str, path: Path, line: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise SimError(f"{path}, line {line}: {column} {text!r} is not a whole number") from None
    if value < 1:
        raise SimError(f"{path}, line {line}: {column} is {value}; it must be at least 1")
    return value


# ---- synthetic ------------------------------------------------------------------------


def synthetic(
    models: int = 8,
    rate_rps: float | None = None,
    duration_s: float = 120.0,
    zipf: float = 1.0,
    mean_input: int = 680,
    mean_output: int = 300,
    seed: int = 0,
) -> Workload:
    """Poisson arrivals at `rate_rps` in all (default 0.1 per model, as in the paper's CSVs);
    each picks model k (k = 1..models) with probability proportional to 1 / k**zipf; prompt and
    output lengths are log-normal (sigma 1) with the given means (ShareGPT's, per DESIGN.md),
    capped at 8192 and 2048 tokens."""
    if models < 1:
        raise SimError(f"a synthetic workload needs at least 1 model, got {models}")
    rate = 0.1 * models if rate_rps is None else rate_rps
    if rate <= 0 or duration_s <= 0:
        raise SimError(f"rate_rps ({rate}) and duration_s ({duration_s}) must be positive")
    if zipf < 0:
        raise SimError(f"zipf exponent must be >= 0 (0 is uniform popularity), got {zipf}")
    rng = random.Random(seed)
    names = [f"model_{k:02d}" for k in range(models)]
    weights = [1 / (k + 1) ** zipf for k in range(models)]
    arrivals = []
    t = rng.expovariate(rate)
    while t < duration_s:
        model = rng.choices(names, weights)[0]
        arrivals.append(Arrival(t, model, _lognormal(rng, mean_input, 8192), _lognormal(rng, mean_output, 2048)))
        t += rng.expovariate(rate)
    if not arrivals:
        raise SimError(f"no request arrived in {duration_s:g} s at {rate:g} requests/s; raise the rate or the duration")
    return make_workload(
        f"synthetic-{models}-{rate:g}rps-{duration_s:g}s-zipf{zipf:g}-seed{seed}", arrivals, size_mix(names)
    )


def _lognormal(rng: random.Random, mean: float, cap: int) -> int:
    sigma = 1.0
    mu = math.log(mean) - sigma**2 / 2
    return max(1, min(cap, round(rng.lognormvariate(mu, sigma))))
