"""ServeGen's per-client rate files as a market: each client a model, arrivals per window from its
fitted distribution at its stated rate, lengths from the dataset file."""

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from services.sim.errors import SimError
from services.sim.workload import load_servegen
from services.sim.workload_renewal import renewal_times
from services.sim.workload_servegen_files import read_client_trace, read_lengths

FOLDER = Path(__file__).resolve().parents[2] / "../shared/data/traces/servegen/m-large"
needs_data = pytest.mark.skipif(not FOLDER.exists(), reason="ServeGen's m-large files are not in ../shared/data")
HOUR = 3600.0


def stated_rates(client: int) -> list[tuple[float, float]]:
    """(window start, rate) straight from the file."""
    rows = [line.split(",") for line in (FOLDER / f"chunk-{client}-trace.csv").read_text().split()]
    return [(float(r[0]), float(r[1])) for r in rows]


def stated_requests(client: int, start: float, end: float) -> float:
    return sum(rate * 600 for t, rate in stated_rates(client) if start <= t < end)


def busiest(n: int, start: float, end: float) -> list[int]:
    ids = [int(p.name.split("-")[1]) for p in FOLDER.glob("chunk-*-trace.csv")]
    return sorted(ids, key=lambda c: (-stated_requests(c, start, end), c))[:n]


def client_of(model: str) -> int:
    return int(model.removeprefix("client_"))


@needs_data
def test_a_client_file_reads_as_its_rows():
    trace = read_client_trace(FOLDER / "chunk-0-trace.csv", 0)
    assert len(trace.starts) == 2016 and trace.ends[-1] == 14 * 86400  # two weeks of 600 s windows
    assert (trace.rates[0], trace.distributions[0], trace.shapes[0]) == (
        1.3316666666666668,
        "Weibull",
        0.3753486140101707,
    )
    assert (trace.rates[1], trace.distributions[1]) == (0.0, "")
    assert (trace.rates[3], trace.distributions[3], trace.shapes[3]) == (0.15, "Gamma", 0.060422107316638725)


@needs_data
def test_clients_arrive_at_the_rates_their_files_state():
    start, end = 20 * HOUR, 24 * HOUR
    w = load_servegen(FOLDER, clients=6, window=(start, end - start), rate_scale=0.05, seed=1)
    counts = Counter(a.model for a in w.arrivals)
    assert sorted(client_of(m) for m in w.models) == sorted(busiest(6, start, end))
    for model in w.models:
        assert counts[model] == pytest.approx(0.05 * stated_requests(client_of(model), start, end), rel=0.1)
    total = sum(0.05 * stated_requests(client_of(m), start, end) for m in w.models)
    assert len(w.arrivals) == pytest.approx(total, rel=0.03)
    assert 0 <= w.arrivals[0].time_s and w.duration_s < end - start


@pytest.mark.parametrize("distribution, shape", [("Gamma", 0.05), ("Gamma", 4.0), ("Weibull", 0.3), ("Weibull", 2.0)])
def test_a_window_gets_its_stated_rate_and_the_distribution_s_burstiness(distribution, shape):
    rng = np.random.default_rng(0)
    counts = [len(renewal_times(rng, distribution, shape, 0.5, 600)) for _ in range(3000)]
    # Counting from an arrival instead of a random instant would add ~(cv**2 - 1) / 2 per window: 3 % at cv 4.5.
    assert np.mean(counts) == pytest.approx(300, rel=0.02)
    gaps = np.diff(renewal_times(rng, distribution, shape, 1.0, 400_000))
    if distribution == "Gamma":
        assert gaps.std() / gaps.mean() == pytest.approx(1 / np.sqrt(shape), rel=0.1)
    assert gaps.mean() == pytest.approx(1.0, rel=0.05)


@needs_data
def test_lengths_follow_the_dataset_period_of_the_window():
    periods = {p.start: p for p in read_lengths(FOLDER / "chunk-1-dataset.json")}
    w = load_servegen(FOLDER, clients=4, window=(6 * HOUR, HOUR), rate_scale=0.05)
    period = periods[21600.0]  # 06:00-12:00 of day one: mean prompt 350.3, output 80.7 tokens
    inputs = np.array([a.input_tokens for a in w.arrivals])
    outputs = np.array([a.output_tokens for a in w.arrivals])
    assert inputs.mean() == pytest.approx(350.3, rel=0.03) and outputs.mean() == pytest.approx(80.7, rel=0.03)
    assert set(inputs) <= set(period.input_values) and set(outputs) <= set(period.output_values)
    # 18:00-24:00 rests on 11 requests in the file: its window borrows 12:00-18:00's lengths.
    evening = load_servegen(FOLDER, clients=4, window=(20 * HOUR, HOUR), rate_scale=0.05)
    assert {a.input_tokens for a in evening.arrivals} <= set(periods[43200.0].input_values)
    assert 64800.0 not in periods


@needs_data
def test_a_seed_reproduces_a_workload_and_a_window_is_a_slice_of_a_longer_one():
    def load(window, seed=1, clients=5):
        return load_servegen(FOLDER, clients=clients, window=window, rate_scale=0.02, seed=seed)

    hour = load((HOUR + 300, HOUR))  # not on a window boundary
    assert hour == load((HOUR + 300, HOUR))
    assert hour.arrivals != load((HOUR + 300, HOUR), seed=2).arrivals
    longer = load((0, 3 * HOUR), clients=[client_of(m) for m in hour.models])
    inside = [a for a in longer.arrivals if HOUR + 300 <= a.time_s < 2 * HOUR + 300]
    assert [(a.model, a.input_tokens, a.output_tokens) for a in hour.arrivals] == [
        (a.model, a.input_tokens, a.output_tokens) for a in inside
    ]
    assert [a.time_s for a in hour.arrivals] == pytest.approx([a.time_s - HOUR - 300 for a in inside])


@needs_data
def test_chosen_clients_are_the_models_and_a_target_rate_scales_them_together():
    w = load_servegen(FOLDER, clients=[142, 61], window=(0, HOUR), rate_rps=5.0)
    assert w.models == ["client_061", "client_142"]
    assert set(w.architectures.values()) <= {"qwen2.5-7b", "yi-1.5-9b", "llama-2-13b"}
    assert len(w.arrivals) / HOUR == pytest.approx(5.0, rel=0.05)
    share = stated_requests(61, 0, HOUR) / (stated_requests(61, 0, HOUR) + stated_requests(142, 0, HOUR))
    assert Counter(a.model for a in w.arrivals)["client_061"] / len(w.arrivals) == pytest.approx(share, abs=0.05)


@needs_data
def test_a_full_day_of_eighty_clients_loads():
    w = load_servegen(FOLDER, clients=80, window=(0, 86400), rate_rps=2.0)
    assert len(w.models) == 80 and w.duration_s < 86400
    assert len(w.arrivals) == pytest.approx(2.0 * 86400, rel=0.05)
    assert all(a.time_s <= b.time_s for a, b in zip(w.arrivals, w.arrivals[1:]))


# ---- bad input --------------------------------------------------------------------------------

DATASET = json.dumps(
    {
        "0": {
            "input_tokens": str({100 + i: 0.01 for i in range(100)}),
            "output_tokens": str({20 + i: 0.01 for i in range(100)}),
        }
    }
)
GOOD_ROWS = "0,2.0,1.0,Gamma,1.0,0.5\n600,0,0,,0,0\n"


def folder_with(tmp_path, traces: dict[int, str], dataset: str | None = DATASET) -> Path:
    folder = tmp_path / "clients"
    folder.mkdir()
    for client, text in traces.items():
        (folder / f"chunk-{client}-trace.csv").write_text(text)
    if dataset is not None:
        (folder / "chunk-1-dataset.json").write_text(dataset)
    return folder


def test_a_small_folder_of_clients_loads(tmp_path):
    folder = folder_with(tmp_path, {1: GOOD_ROWS, 2: "0,0,0,,0,0\n600,1.0,3.0,Weibull,0.5,1.0\n"})
    w = load_servegen(folder, clients=2, window=(0, 1200))
    counts = Counter(a.model for a in w.arrivals)
    assert set(counts) == {"client_001", "client_002"}
    assert all(a.time_s >= 600 for a in w.arrivals if a.model == "client_002")
    assert {a.input_tokens for a in w.arrivals} <= set(range(100, 200))


@pytest.mark.parametrize(
    "traces, kwargs, problem",
    [
        ({}, {}, "holds no chunk-<client>-trace.csv file"),
        ({1: GOOD_ROWS}, {"clients": [7]}, "has no trace for client(s) 7; it has clients 1 to 1 (1 in all)"),
        ({1: GOOD_ROWS}, {"clients": 3}, "asked for 3 clients; "),
        ({1: GOOD_ROWS}, {"clients": 1, "window": (1000, 600)}, "does not lie within the trace (0 s to 1200 s"),
        ({1: "0,2.0,1.0,Gamma,1.0\n"}, {}, "row 1: 5 fields, expected 6"),
        ({1: GOOD_ROWS + "1200,1,1,Pareto,1,1\n"}, {"window": (0, None)}, "row 3: unknown distribution 'Pareto'"),
        ({1: "0,-1,1.0,Gamma,1.0,0.5\n"}, {}, "row 1: rate_rps is -1; it must be >= 0"),
        ({1: "0,fast,1.0,Gamma,1.0,0.5\n"}, {}, "row 1: rate_rps 'fast' is not a number"),
        ({1: "0,1,1.0,Gamma,0,0.5\n"}, {}, "row 1: the Gamma shape (param1) is 0; it must be positive"),
        ({1: "600,1,1.0,Gamma,1,1\n0,1,1.0,Gamma,1,1\n"}, {}, "window_start_s does not increase from row 1 to row 2"),
        (
            {1: "0,1,1,Gamma,1,1\n900,1,1,Gamma,1,1\n600,1,1,Gamma,1,1\n1800,0,0,,0,0\n"},
            {"window": (0, None)},
            "row 3: window_start_s does not increase",
        ),
        ({1: "0,0,0,,0,0\n600,0,0,,0,0\n"}, {"window": (0, 1200)}, "no request to scale"),
        ({1: GOOD_ROWS}, {"window": (0, None), "rate_scale": 2000}, "would make about 2.4e+06 requests"),
        ({1: GOOD_ROWS}, {"window": (0, 0)}, "a window lasts more than 0 s"),
        ({1: GOOD_ROWS}, {"seed": -3}, "the seed must be a whole number >= 0, got -3"),
    ],
)
def test_bad_client_files_and_settings_are_named(tmp_path, traces, kwargs, problem):
    folder = folder_with(tmp_path, traces)
    kwargs = {"clients": 1, "window": (0, 600), **kwargs}
    if "no request to scale" in problem:
        kwargs["rate_rps"] = 1.0
    with pytest.raises(SimError, match=re.escape(problem)):
        load_servegen(folder, **kwargs)


@pytest.mark.parametrize(
    "dataset, problem",
    [
        (None, "holds no chunk-<client>-dataset.json to draw lengths from"),
        ("{not json", "is not JSON"),
        (
            json.dumps({"0": {"input_tokens": "{1: 0.5, 2: 0.5}", "output_tokens": "{1: 1.0}"}}),
            "has no period with 100",
        ),
        (
            json.dumps({"0": {"input_tokens": "{1: half}", "output_tokens": "{}"}}),
            "not a list of 'tokens: probability'",
        ),
        (
            json.dumps({"0": {"input_tokens": "{1.5: 1.0}", "output_tokens": "{}"}}),
            "token counts must be whole numbers",
        ),
        (json.dumps({"0": {"input_tokens": "{}"}}), "expected the fields input_tokens and output_tokens"),
        (json.dumps({"dawn": {"input_tokens": "{}", "output_tokens": "{}"}}), "period 'dawn': the period start is not"),
    ],
)
def test_a_bad_dataset_file_is_named(tmp_path, dataset, problem):
    folder = folder_with(tmp_path, {1: GOOD_ROWS}, dataset)
    with pytest.raises(SimError, match=re.escape(problem)):
        load_servegen(folder, clients=1, window=(0, 600))


def test_a_missing_folder_is_named(tmp_path):
    with pytest.raises(SimError, match="ServeGen folder .*nope does not exist"):
        load_servegen(tmp_path / "nope")
