"""Workloads: when each request arrives, for which model, with how many prompt and output tokens.

    workload = load_csv(Path("../shared/data/aegaeon/workloads/synth-8-0.1-1.0-1.0.csv"))
    workload = synthetic(models=8, rate_rps=0.8, duration_s=120, cv=1.0, seed=1)
    workload = load_azure(Path("../shared/data/traces/azure_llm_code_2023.csv"), models=80, zipf=1.0)
    workload = load_servegen(Path("../shared/data/traces/servegen/m-large"), clients=80, window=(72000, 3600))

One loader per source, each in its own file (workload_paper.py, workload_synthetic.py,
workload_azure.py, workload_servegen.py); this file holds what they share: the Workload
they all return, the 6:2:2 size mix, Zipf weights and cutting a window out of a workload.

Models stand for a market: as in the Aegaeon paper they map onto a 6:2:2 mix of 7B, 9B and
13B models. `size_mix` deals the sizes out in a repeating pattern of ten, interleaved
(7B 7B 9B 7B 13B 7B 7B 9B 7B 13B), in model-name order, so that small markets get the mix too.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from operator import attrgetter

from services.sim.cost import ARCHITECTURES
from services.sim.errors import SimError

SIZE_PATTERN = (
    "qwen2.5-7b", "qwen2.5-7b", "yi-1.5-9b", "qwen2.5-7b", "llama-2-13b",
    "qwen2.5-7b", "qwen2.5-7b", "yi-1.5-9b", "qwen2.5-7b", "llama-2-13b",
)  # fmt: skip
"""6 x 7B, 2 x 9B, 2 x 13B in every ten models, in model-name order."""


@dataclass(frozen=True, slots=True)
class Arrival:
    time_s: float
    """Seconds from the start of the workload."""
    model: str
    input_tokens: int
    output_tokens: int
    """Tokens the request generates (the simulator ignores EOS: it runs to this length)."""
    tenant: str = ""
    """Who sends it (GenerateRequest.tenant); the workload files name none."""


@dataclass(frozen=True)
class Workload:
    name: str
    arrivals: tuple[Arrival, ...]
    """In time order."""
    architectures: dict[str, str]
    """Every model of the market (also those no request in the workload asks for), mapped to its
    architecture (a key of cost.ARCHITECTURES): what its bytes and steps cost."""

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


def priced_by(workload: Workload, architectures: Iterable[str]) -> Workload:
    """The workload with its models dealt over `architectures` in name order (as size_mix deals
    the paper's mix), unless every model already has one of them: a market priced by another
    cost model, e.g. an engine profile that knows only our own models."""
    known = list(dict.fromkeys(architectures))
    if not known:
        raise SimError("no architectures to price the workload's models with")
    if all(a in known for a in workload.architectures.values()):
        return workload
    ordered = sorted(workload.architectures, key=natural_key)
    return Workload(workload.name, workload.arrivals, {m: known[i % len(known)] for i, m in enumerate(ordered)})


def zipf_weights(n: int, exponent: float) -> list[float]:
    """Popularity of the k-th most popular of n models, proportional to 1 / k**exponent (0: uniform)."""
    if exponent < 0:
        raise SimError(f"zipf exponent must be >= 0 (0 is uniform popularity), got {exponent:g}")
    raw = [1 / (k + 1) ** exponent for k in range(n)]
    total = sum(raw)
    return [w / total for w in raw]


def make_workload(name: str, arrivals: Iterable[Arrival], architectures: dict[str, str] | None = None) -> Workload:
    ordered = tuple(sorted(arrivals, key=attrgetter("time_s")))
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


def cut(
    workload: Workload, window: tuple[float, float | None] | None = None, max_requests: int | None = None
) -> Workload:
    """The requests in [start, start + duration) of `window` (duration None: to the end), times made
    relative to its start, then at most the first `max_requests`. The market (its models) stays whole."""
    arrivals = workload.arrivals
    name = workload.name
    if window is not None:
        start, duration = window
        end = float("inf") if duration is None else start + duration
        arrivals = tuple(
            replace(a, time_s=a.time_s - start)
            for a in arrivals
            if start <= a.time_s < end
        )
        name += f"@{format_window(window)}"
        if not arrivals:
            raise SimError(f"workload {workload.name!r} has no request in the window {format_window(window)}")
    if max_requests is not None:
        if max_requests < 1:
            raise SimError(f"max_requests must be at least 1, got {max_requests}")
        if len(arrivals) > max_requests:
            arrivals = arrivals[:max_requests]
            name += f"-first{max_requests}"
    return Workload(name, arrivals, workload.architectures)


def speed_up(workload: Workload, factor: float) -> Workload:
    """The same requests `factor` times as fast (times divided by it)."""
    if factor == 1:
        return workload
    arrivals = tuple(replace(a, time_s=a.time_s / factor) for a in workload.arrivals)
    return Workload(f"{workload.name}-x{factor:.3g}", arrivals, workload.architectures)


def format_window(window: tuple[float, float | None]) -> str:
    start, duration = window
    return f"{start:g}s+{'end' if duration is None else f'{duration:g}s'}"


def check_window(window: tuple[float, float | None] | None) -> None:
    if window is None:
        return
    start, duration = window
    if not start >= 0:
        raise SimError(f"a window starts at 0 s or later, got {start:g} s")
    if duration is not None and not duration > 0:
        raise SimError(f"a window lasts more than 0 s, got {duration:g} s")


def check_seed(seed: int) -> None:
    if seed < 0:
        raise SimError(f"the seed must be a whole number >= 0, got {seed}")


def rate_factor(rate_scale: float | None, rate_rps: float | None, natural_rps: float, what: str) -> float:
    """How much faster than the source to run: `rate_scale` as given, or what makes the mean
    total rate `rate_rps` (never both)."""
    if rate_scale is not None and rate_rps is not None:
        raise SimError("give a rate scale or a target rate, not both")
    if rate_rps is not None:
        if not rate_rps > 0:
            raise SimError(f"the target rate must be positive, got {rate_rps:g} requests/s")
        if not natural_rps > 0:
            raise SimError(f"{what} has no request to scale to {rate_rps:g} requests/s")
        return rate_rps / natural_rps
    scale = 1.0 if rate_scale is None else rate_scale
    if not scale > 0:
        raise SimError(f"the rate scale must be positive, got {scale:g}")
    return scale


_LOADERS = {
    "load_csv": "services.sim.workload_paper",
    "synthetic": "services.sim.workload_synthetic",
    "load_azure": "services.sim.workload_azure",
    "load_servegen": "services.sim.workload_servegen",
}


def __getattr__(name: str):
    # The loaders import this module; importing them here lazily keeps either import order working.
    if name in _LOADERS:
        import importlib

        return getattr(importlib.import_module(_LOADERS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
