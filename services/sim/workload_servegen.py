"""ServeGen's per-client rate files (Alibaba Cloud Model Studio; Xiang et al., arXiv:2505.09999) as a market.

    load_servegen(Path("../shared/data/traces/servegen/m-large"), clients=80, window=(72000, 3600))

Each client stands for a model. In every 600 s window of its trace (workload_servegen_files.py)
a client's requests arrive as a renewal process with the window's fitted distribution: its shape
(Gamma k or Weibull c) and the scale that gives the window's stated mean rate (times the rate
factor). The file's own Gamma scales give the stated rates already (median rate * mean gap
0.998); its Weibull fits do not (median 1.17, tenth percentile 0.83, ninetieth 2.5), so the
stated rate wins. Lengths are drawn from the client's dataset file, period by period (a period
without enough requests behind it borrows the one before, else the first that has them); a
client without a dataset file of its own uses the folder's lowest-numbered one (the copy in
../shared/data ships chunk-1-dataset.json only), or `dataset` for all clients when given.

Trace time 0 is midnight of the first day (ServeGen's examples take 72000-75600 s as 20:00-21:00).
Each (seed, client, window) has a random stream of its own, so a client's requests in a window are
the same whichever other clients, rate factor aside, and whichever span around it are chosen.
"""

from __future__ import annotations

from collections.abc import Sequence
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
)
from services.sim.workload_files import require_dir
from services.sim.workload_renewal import renewal_times
from services.sim.workload_servegen_files import (
    ClientTrace,
    Lengths,
    dataset_files,
    read_client_trace,
    read_lengths,
    trace_files,
)

MAX_REQUESTS = 2_000_000
"""More than this would take minutes to simulate: refused with a hint to scale the rate down."""


def load_servegen(
    folder: Path,
    clients: int | Sequence[int] = 8,
    window: tuple[float, float | None] | None = (0.0, 3600.0),
    rate_scale: float | None = None,
    rate_rps: float | None = None,
    seed: int = 0,
    dataset: Path | None = None,
    architectures: dict[str, str] | None = None,
) -> Workload:
    """`clients`: the N busiest in the window, or these client ids. `window`: (start, duration or
    None for the rest of the trace) in trace seconds; None: the whole trace."""
    folder = require_dir(folder, "ServeGen folder")
    check_seed(seed)
    check_window(window)
    start, end = (None, None) if window is None else (window[0], None if window[1] is None else sum(window))
    traces = _read_traces(folder, clients, start, end)
    trace_start = min(t.span[0] for t in traces)
    trace_end = max(t.span[1] for t in traces)
    start = trace_start if start is None else start
    end = trace_end if end is None else end
    if not start < trace_end or end > trace_end:
        raise SimError(
            f"the window {format_window((start, end - start))} does not lie within the trace "
            f"({trace_start:g} s to {trace_end:g} s, {(trace_end - trace_start) / 86400:g} days)"
        )
    rates = {t.client: t.mean_rate(start, end) for t in traces}
    if isinstance(clients, int):
        traces = sorted(traces, key=lambda t: (-rates[t.client], t.client))[:clients]
    natural = sum(rates[t.client] for t in traces)
    factor = rate_factor(rate_scale, rate_rps, natural, f"the chosen clients in {format_window((start, end - start))}")
    expected = natural * factor * (end - start)
    if expected > MAX_REQUESTS:
        raise SimError(
            f"{len(traces)} clients over {end - start:g} s at {natural * factor:.3g} requests/s would make about "
            f"{expected:.3g} requests (at most {MAX_REQUESTS:g}); lower the rate (rate scale, target rate), "
            "the clients or the window"
        )

    lengths = _lengths_by_client(folder, [t.client for t in traces], dataset)
    names = [f"client_{t.client:03d}" for t in traces]
    times, models, inputs, outputs = [], [], [], []
    for k, trace in enumerate(traces):
        t, i, o = _client_requests(trace, lengths[trace.client], start, end, factor, seed)
        times.append(t - start)
        models.append(np.full(len(t), k))
        inputs.append(i)
        outputs.append(o)
    all_times = np.concatenate(times)
    order = np.argsort(all_times, kind="stable")
    arrivals = list(
        map(
            Arrival,
            all_times[order].tolist(),
            np.array(names, dtype=object)[np.concatenate(models)[order]].tolist(),
            np.concatenate(inputs)[order].tolist(),
            np.concatenate(outputs)[order].tolist(),
        )
    )
    if not arrivals:
        raise SimError(f"no request of the chosen clients falls in {format_window((start, end - start))}")
    name = f"servegen-{folder.name}-{len(traces)}clients@{format_window((start, end - start))}"
    if factor != 1:
        name += f"-x{factor:.3g}"
    return make_workload(f"{name}-seed{seed}", arrivals, architectures or size_mix(names))


def _read_traces(
    folder: Path, clients: int | Sequence[int], start: float | None, end: float | None
) -> list[ClientTrace]:
    files = trace_files(folder)
    if not files:
        raise SimError(f"ServeGen folder {folder} holds no chunk-<client>-trace.csv file")
    if isinstance(clients, int):
        if not 1 <= clients <= len(files):
            raise SimError(f"asked for {clients} clients; {folder} has {len(files)}")
        chosen = sorted(files)
    else:
        chosen = list(dict.fromkeys(clients))
        unknown = [c for c in chosen if c not in files]
        if unknown or not chosen:
            raise SimError(
                f"{folder} has no trace for client(s) {', '.join(map(str, unknown)) or '(none given)'}; "
                f"it has clients {min(files)} to {max(files)} ({len(files)} in all)"
            )
    return [read_client_trace(files[c], c, start, end) for c in chosen]


def _lengths_by_client(folder: Path, clients: list[int], dataset: Path | None) -> dict[int, list[Lengths]]:
    files = dataset_files(folder)
    if dataset is None and not files:
        raise SimError(f"ServeGen folder {folder} holds no chunk-<client>-dataset.json to draw lengths from")
    read: dict[Path, list[Lengths]] = {}
    out = {}
    for client in clients:
        path = Path(dataset) if dataset is not None else files.get(client, files[min(files)] if files else None)
        if path not in read:
            read[path] = read_lengths(path)
        out[client] = read[path]
    return out


def _client_requests(
    trace: ClientTrace, periods: list[Lengths], start: float, end: float, factor: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Times (trace seconds), prompt and output tokens of one client's requests in [start, end)."""
    period_starts = np.array([p.start for p in periods])
    times, inputs, outputs = [np.empty(0)], [np.empty(0, np.int64)], [np.empty(0, np.int64)]
    first, last = np.searchsorted(trace.ends, start, side="right"), np.searchsorted(trace.starts, end, side="left")
    for w in range(first, last):
        row = trace.first_row + w
        rate = trace.rates[w] * factor
        if rate <= 0:
            continue
        rng = np.random.default_rng([seed, trace.client, row])
        w_start, w_end = float(trace.starts[w]), float(trace.ends[w])
        t = w_start + renewal_times(rng, trace.distributions[w], float(trace.shapes[w]), rate, w_end - w_start)
        period = periods[max(0, int(np.searchsorted(period_starts, w_start, side="right")) - 1)]
        i, o = period.sample(rng, len(t))
        inside = (t >= start) & (t < end)
        times.append(t[inside])
        inputs.append(i[inside])
        outputs.append(o[inside])
    return np.concatenate(times), np.concatenate(inputs), np.concatenate(outputs)
