"""The Azure LLM inference traces of 2023 (Azure Public Dataset; Splitwise, ISCA'24) as a market.

    load_azure(Path("../shared/data/traces/azure_llm_code_2023.csv"), models=80, zipf=1.0, seed=0)

Header `TIMESTAMP,ContextTokens,GeneratedTokens`, one row per request of one service. Its
arrival times and token lengths are kept as they are; each request is dealt to one of `models`
models at random (seeded), model k (k = 1..models) with probability proportional to
1 / k**zipf (0: uniform). The dealing is done over the whole trace before any window is cut,
so a window holds the same requests for the same models as the whole trace does.

`rate_scale` runs the trace that much faster (times divided by it: 2 takes an hour's requests
in 30 minutes), or `rate_rps` picks the factor that makes the mean rate that many requests/s.
"""

from __future__ import annotations

import csv
import datetime
from pathlib import Path

import numpy as np

from services.sim.errors import SimError
from services.sim.workload import (
    Arrival,
    Workload,
    check_seed,
    check_window,
    format_window,
    make_workload,
    rate_factor,
    size_mix,
    zipf_weights,
)
from services.sim.workload_files import AZURE_COLUMNS, missing_columns, parse_count, require_file


def load_azure(
    path: Path,
    models: int = 8,
    zipf: float = 1.0,
    window: tuple[float, float | None] | None = None,
    rate_scale: float | None = None,
    rate_rps: float | None = None,
    seed: int = 0,
    architectures: dict[str, str] | None = None,
) -> Workload:
    """`window` is (start, duration or None) in seconds of the trace from its first request."""
    if models < 1:
        raise SimError(f"an Azure workload needs at least 1 model, got {models}")
    check_window(window)
    check_seed(seed)
    times, inputs, outputs = read_trace(path)
    names = [f"model_{k:02d}" for k in range(models)]
    picks = np.random.default_rng(seed).choice(models, size=len(times), p=zipf_weights(models, zipf))

    start, end = 0.0, float("inf")
    if window is not None:
        start = window[0]
        end = float("inf") if window[1] is None else start + window[1]
    keep = (times >= start) & (times < end)
    if not keep.any():
        raise SimError(f"{path}: no request in the window {format_window(window)}; the trace spans {times[-1]:.0f} s")
    span = min(end, float(times[-1])) - start
    natural = int(keep.sum()) / span if span > 0 else 0.0
    factor = rate_factor(rate_scale, rate_rps, natural, f"{path} in that window")

    kept_times = ((times[keep] - start) / factor).tolist()
    arrivals = list(
        map(Arrival, kept_times, [names[i] for i in picks[keep]], inputs[keep].tolist(), outputs[keep].tolist())
    )
    name = f"azure-{Path(path).stem}-{models}models-zipf{zipf:g}"
    if window is not None:
        name += f"@{format_window(window)}"
    if factor != 1:
        name += f"-x{factor:.3g}"
    return make_workload(f"{name}-seed{seed}", arrivals, architectures or size_mix(names))


def read_trace(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seconds since the first request (sorted), prompt tokens, generated tokens."""
    path = require_file(path)
    with path.open(newline="") as f:
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader, [])]
        problem = missing_columns(path, header, AZURE_COLUMNS)
        if problem:
            raise problem
        where = [header.index(c) for c in AZURE_COLUMNS]
        width = len(header)
        stamps, inputs, outputs = [], [], []
        first_day = None
        for row in reader:
            if not row or all(not cell.strip() for cell in row):
                continue
            line = f"{path}, line {reader.line_num}"
            if len(row) < width:
                raise SimError(f"{line}: {len(row)} fields, expected {width} ({','.join(header)})")
            stamp, input_text, output_text = (row[i].strip() for i in where)
            day, seconds = _parse_timestamp(stamp, line)
            if first_day is None:
                first_day = day
            stamps.append((day - first_day) * 86400 + seconds)
            inputs.append(parse_count(input_text, "ContextTokens", line))
            outputs.append(parse_count(output_text, "GeneratedTokens", line))
    if not stamps:
        raise SimError(f"workload file {path} has a header but no request")
    times = np.asarray(stamps)
    order = np.argsort(times, kind="stable")
    times = times[order]
    # Rounded to the microsecond: day offsets leave float noise in the last digits.
    return np.round(times - times[0], 6), np.asarray(inputs)[order], np.asarray(outputs)[order]


def _parse_timestamp(text: str, line: str) -> tuple[int, float]:
    """'2023-11-16 18:17:03.9799600' -> (day number, seconds into the day); 7 fractional digits
    are more than datetime parses, hence by hand."""
    try:
        date_text, clock = text.replace("T", " ").split()
        day = datetime.date.fromisoformat(date_text).toordinal()
        hours, minutes, seconds = clock.split(":")
        value = int(hours) * 3600 + int(minutes) * 60 + float(seconds)
        if not (0 <= value < 86401 and float(seconds) < 61):
            raise ValueError
    except ValueError:
        raise SimError(f"{line}: TIMESTAMP {text!r} is not a time such as 2023-11-16 18:17:03.97996") from None
    return day, value
