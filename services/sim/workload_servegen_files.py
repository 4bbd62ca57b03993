"""ServeGen's per-client files (alibaba/ServeGen, `data/language/<model>/`), read and checked.

`chunk-<client>-trace.csv`, no header, one row per window:
`window_start_s,rate_rps,cv,distribution,param1,param2`: the client's mean request rate in the
window from this start to the next row's, the coefficient of variation of its gaps, and the
distribution fitted to the gaps, Gamma (param1 shape k, param2 scale: mean k * scale, cv
1/sqrt(k)) or Weibull (param1 shape c, param2 scale), or nothing where no request came.

`chunk-<client>-dataset.json`: {"<period start s>": {"input_tokens": "{tokens: probability,
...}", "output_tokens": "{...}"}}, the client's length distributions per period (6 hours in
m-large); "{}" where the client sent nothing in that period.
"""

from __future__ import annotations

import bisect
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from services.sim.errors import SimError
from services.sim.workload_files import require_file
from services.sim.workload_renewal import DISTRIBUTIONS

TRACE_NAME = re.compile(r"chunk-(\d+)-trace\.csv")
DATASET_NAME = re.compile(r"chunk-(\d+)-dataset\.json")
MIN_PERIOD_REQUESTS = 100
"""A period whose distributions rest on fewer requests than this is not used for lengths."""


@dataclass(frozen=True)
class ClientTrace:
    """The windows of one client's trace that overlap the span asked for."""

    client: int
    first_row: int
    """Row index (from 0) of the first window here in the file."""
    starts: np.ndarray
    """Window starts (s), increasing; a window lasts to the next start (the last as long as the one before)."""
    ends: np.ndarray
    rates: np.ndarray
    """Mean requests/s in each window."""
    distributions: list[str]
    """"" where the window has no request."""
    shapes: np.ndarray
    span: tuple[float, float]
    """Start of the file's first window, end of its last."""

    def mean_rate(self, start: float, end: float) -> float:
        """Mean requests/s over [start, end)."""
        overlap = np.clip(np.minimum(self.ends, end) - np.maximum(self.starts, start), 0, None)
        return float((overlap * self.rates).sum() / (end - start))


def read_client_trace(path: Path, client: int, start: float | None = None, end: float | None = None) -> ClientTrace:
    """The windows overlapping [start, end) (None: from the first, to the last); only those rows are
    parsed (found by bisection on the window starts), which makes an hour of 162 clients' two-week
    files quick to read."""
    lines = require_file(path, "ServeGen trace file").read_text().split()
    if not lines:
        raise SimError(f"ServeGen trace file {path} has no window")
    key = _row_start(path)
    if len(lines) > 1 and not key(lines[0]) < key(lines[-1]):
        raise SimError(f"{path}: window_start_s does not increase from row 1 to row {len(lines)}")
    first = 0 if start is None else max(0, bisect.bisect_right(lines, start, key=key) - 1)
    last = len(lines) if end is None else max(first + 1, bisect.bisect_left(lines, end, key=key))
    rows = [line.split(",") for line in lines[first : last + 1]]  # one more row: where the last window ends
    try:
        starts, rates, distributions, shapes = _columns(rows)
    except (ValueError, SimError):
        _find_bad_row(path, rows, first)
        raise
    if starts.size > 1 and not (np.diff(starts) > 0).all():
        raise SimError(
            f"{path}, row {first + int(np.argmin(np.diff(starts) > 0)) + 2}: window_start_s does not increase"
        )
    trace_start = starts[0] if first == 0 else key(lines[0])
    if last + 1 >= len(lines):  # the file's last window is here: it lasts as long as the one before
        width = starts[-1] - starts[-2] if starts.size > 1 else 600.0
        ends = np.append(starts[1:], starts[-1] + width)
        trace_end = float(ends[-1])
    else:
        ends = starts[1:]
        starts, rates, distributions, shapes = starts[:-1], rates[:-1], distributions[:-1], shapes[:-1]
        trace_end = key(lines[-1]) + key(lines[-1]) - key(lines[-2])
    return ClientTrace(client, first, starts, ends, rates, distributions, shapes, (float(trace_start), trace_end))


def _row_start(path: Path):
    def start_of(line: str) -> float:
        try:
            return float(line.split(",", 1)[0])
        except ValueError:
            raise SimError(f"{path}: window_start_s {line.split(',', 1)[0]!r} is not a number") from None

    return start_of


def _columns(rows: list[list[str]]) -> tuple[np.ndarray, np.ndarray, list[str], np.ndarray]:
    if any(len(row) != 6 for row in rows):
        raise SimError("a row without 6 fields")
    if not rows:
        return np.empty(0), np.empty(0), [], np.empty(0)
    start, rate, _cv, distribution, shape, _scale = zip(*rows)
    starts, rates, shapes = (np.array(column, dtype=float) for column in (start, rate, shape))
    if not (np.isfinite(starts).all() and np.isfinite(rates).all() and np.isfinite(shapes).all()):
        raise SimError("a number that is not finite")
    # A rate without a fitted distribution arrives as Poisson.
    distributions = [d or ("Exponential" if r > 0 else "") for d, r in zip(distribution, rates.tolist())]
    if (rates < 0).any() or not set(distributions) <= {"", *DISTRIBUTIONS}:
        raise SimError("a negative rate or an unknown distribution")
    if ((rates > 0) & (shapes <= 0) & np.array([d != "Exponential" for d in distributions])).any():
        raise SimError("a shape that is not positive")
    return starts, rates, distributions, shapes


def _find_bad_row(path: Path, rows: list[list[str]], first_row: int) -> None:
    """Raises the error that names the first bad row (the fast path only knows that one is bad)."""
    for number, fields in enumerate(rows, first_row + 1):
        where = f"{path}, row {number}"
        if len(fields) != 6:
            raise SimError(
                f"{where}: {len(fields)} fields, expected 6 (window_start_s,rate_rps,cv,distribution,param1,param2)"
            )
        _number(fields[0], "window_start_s", where)
        rate = _number(fields[1], "rate_rps", where)
        if rate < 0:
            raise SimError(f"{where}: rate_rps is {fields[1]}; it must be >= 0")
        distribution = fields[3]
        if distribution and distribution not in DISTRIBUTIONS:
            raise SimError(f"{where}: unknown distribution {distribution!r}; known: {', '.join(DISTRIBUTIONS)}")
        shape = _number(fields[4], "param1", where)
        if rate > 0 and distribution in ("Gamma", "Weibull") and not shape > 0:
            raise SimError(f"{where}: the {distribution} shape (param1) is {fields[4]}; it must be positive")


def _number(text: str, column: str, where: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise SimError(f"{where}: {column} {text.strip()!r} is not a number") from None
    if not math.isfinite(value):
        raise SimError(f"{where}: {column} is {text.strip()}; it must be a finite number")
    return value


@dataclass(frozen=True)
class Lengths:
    """Token-length distributions of one period: sorted values and their cumulative probabilities."""

    start: float
    input_values: np.ndarray
    input_cdf: np.ndarray
    output_values: np.ndarray
    output_cdf: np.ndarray

    def sample(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        """n (input, output) pairs, drawn independently; 0 tokens count as 1."""
        inputs = self.input_values[np.searchsorted(self.input_cdf, rng.random(n), side="right")]
        outputs = self.output_values[np.searchsorted(self.output_cdf, rng.random(n), side="right")]
        return np.maximum(inputs, 1), np.maximum(outputs, 1)


def read_lengths(path: Path) -> list[Lengths]:
    """The periods with at least MIN_PERIOD_REQUESTS requests behind them, in time order."""
    path = require_file(path, "ServeGen dataset file")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SimError(f"ServeGen dataset file {path} is not JSON: {e}") from None
    if not isinstance(data, dict):
        raise SimError(f"ServeGen dataset file {path}: expected an object of periods, got {type(data).__name__}")
    periods = []
    for key, fields in data.items():
        where = f"{path}, period {key!r}"
        try:
            start = float(key)
        except ValueError:
            raise SimError(f"{where}: the period start is not a number of seconds") from None
        if not isinstance(fields, dict) or not {"input_tokens", "output_tokens"} <= set(fields):
            raise SimError(f"{where}: expected the fields input_tokens and output_tokens")
        inputs = _pmf(fields["input_tokens"], f"{where}, input_tokens")
        outputs = _pmf(fields["output_tokens"], f"{where}, output_tokens")
        if inputs is None or outputs is None or min(inputs[2], outputs[2]) < MIN_PERIOD_REQUESTS:
            continue
        periods.append(Lengths(start, *inputs[:2], *outputs[:2]))
    if not periods:
        raise SimError(
            f"ServeGen dataset file {path} has no period with {MIN_PERIOD_REQUESTS} or more requests to draw lengths from"
        )
    return sorted(periods, key=lambda p: p.start)


def _pmf(text, where: str) -> tuple[np.ndarray, np.ndarray, float] | None:
    """'{143: 0.25, 148: 0.75}' -> (values, cumulative probabilities, a lower bound of the requests
    behind it: 1 / the smallest probability); None for '{}'."""
    if not isinstance(text, str) or not text.strip().startswith("{") or not text.strip().endswith("}"):
        raise SimError(f"{where}: expected a string such as '{{143: 0.25, 148: 0.75}}'")
    body = text.strip()[1:-1]
    if not body.strip():
        return None
    try:
        pairs = np.array(body.replace(":", " ").replace(",", " ").split(), dtype=float).reshape(-1, 2)
    except ValueError:
        raise SimError(f"{where}: not a list of 'tokens: probability' pairs") from None
    values, probabilities = pairs[:, 0], pairs[:, 1]
    if not (np.isfinite(pairs).all() and (values >= 0).all() and (values == np.round(values)).all()):
        raise SimError(f"{where}: token counts must be whole numbers >= 0")
    if (probabilities < 0).any() or not probabilities.sum() > 0:
        raise SimError(f"{where}: probabilities must be >= 0 with a positive sum")
    order = np.argsort(values)
    cdf = np.cumsum(probabilities[order])
    least_requests = cdf[-1] / probabilities[probabilities > 0].min()
    return values[order].astype(np.int64), cdf / cdf[-1], float(least_requests)


def trace_files(folder: Path) -> dict[int, Path]:
    return {int(m.group(1)): p for p in folder.iterdir() if (m := TRACE_NAME.fullmatch(p.name))}


def dataset_files(folder: Path) -> dict[int, Path]:
    return {int(m.group(1)): p for p in folder.iterdir() if (m := DATASET_NAME.fullmatch(p.name))}
