"""The Aegaeon paper's workload CSVs (SOSP'25 artifact, `aegaeon/sim/simdata/synth-*.csv`).

Header `Request Time,Model Name,Input Length,Output Length`, times as HH:MM:SS.fff from the
start. Their models are placeholders (synth_model_00, ...); as in the paper they stand for a
6:2:2 mix of 7B, 9B and 13B models (workload.size_mix).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

from services.sim.errors import SimError
from services.sim.workload import Arrival, Workload, check_window, cut, make_workload, rate_factor, speed_up
from services.sim.workload_files import PAPER_COLUMNS, missing_columns, parse_count, require_file


def load_csv(
    path: Path,
    architectures: dict[str, str] | None = None,
    window: tuple[float, float | None] | None = None,
    rate_scale: float | None = None,
    rate_rps: float | None = None,
) -> Workload:
    """`window`: (start, duration or None for the rest) in seconds, cut out and made to start at 0;
    `rate_scale` replays it that many times as fast, or `rate_rps` picks the factor that makes its
    mean rate that many requests/s."""
    check_window(window)
    whole = _read(require_file(path), architectures)
    workload = cut(whole, window)
    start, duration = window or (0.0, None)
    span = min(whole.duration_s, start + (duration or float("inf"))) - start
    natural = len(workload.arrivals) / span if span > 0 else 0.0
    return speed_up(workload, rate_factor(rate_scale, rate_rps, natural, str(path)))


def _read(path: Path, architectures: dict[str, str] | None) -> Workload:
    with path.open(newline="") as f:
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader, [])]
        problem = missing_columns(path, header, PAPER_COLUMNS)
        if problem:
            raise problem
        where = [header.index(c) for c in PAPER_COLUMNS]
        arrivals = []
        for row in reader:
            line = f"{path}, line {reader.line_num}"
            if not row or all(not cell.strip() for cell in row):
                continue
            if len(row) < len(header):
                raise SimError(f"{line}: {len(row)} fields, expected {len(header)} ({','.join(header)})")
            time_text, model, input_text, output_text = (row[i].strip() for i in where)
            if not model:
                raise SimError(f"{line}: the Model Name is empty")
            arrivals.append(
                Arrival(
                    _parse_time(time_text, line),
                    model,
                    parse_count(input_text, "Input Length", line),
                    parse_count(output_text, "Output Length", line),
                )
            )
    return make_workload(path.name, arrivals, architectures)


def _parse_time(text: str, line: str) -> float:
    """HH:MM:SS(.fff), MM:SS(.fff) or plain seconds."""
    try:
        seconds = 0.0
        for part in text.split(":"):
            seconds = seconds * 60 + float(part)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds < 0:
        raise SimError(f"{line}: Request Time {text!r} is not a time such as 00:01:02.500")
    return seconds
