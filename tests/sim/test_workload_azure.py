"""The Azure 2023 trace as a market: its arrivals and lengths, dealt over N models by a popularity law."""

import csv
import re
from collections import Counter
from pathlib import Path

import pytest

from services.sim.errors import SimError
from services.sim.workload import load_azure

TRACE = Path(__file__).resolve().parents[2] / "../shared/data/traces/azure_llm_code_2023.csv"
needs_trace = pytest.mark.skipif(not TRACE.exists(), reason="the Azure trace is not in ../shared/data")
HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens\n"


def file_rows():
    with TRACE.open(newline="") as f:
        return [(int(r["ContextTokens"]), int(r["GeneratedTokens"])) for r in csv.DictReader(f)]


@needs_trace
def test_every_request_of_the_trace_keeps_its_time_and_lengths():
    w = load_azure(TRACE, models=8)
    rows = file_rows()
    assert len(w.arrivals) == len(rows) == 8819
    assert [(a.input_tokens, a.output_tokens) for a in w.arrivals] == rows  # the file is in time order
    assert w.arrivals[0].time_s == 0 and w.arrivals[1].time_s == pytest.approx(0.052)  # 18:17:03.97996 -> .03196
    assert w.duration_s == pytest.approx(3435.948, abs=1e-3)  # 18:17:03.97996 to 19:14:19.92802
    assert w.models == [f"model_{k:02d}" for k in range(8)]


@needs_trace
@pytest.mark.parametrize("zipf", [0.0, 1.0, 1.5])
def test_models_get_requests_by_the_popularity_law(zipf):
    w = load_azure(TRACE, models=4, zipf=zipf, seed=2)
    counts = Counter(a.model for a in w.arrivals)
    weights = [1 / k**zipf for k in range(1, 5)]
    for k, weight in enumerate(weights):
        assert counts[f"model_{k:02d}"] / len(w.arrivals) == pytest.approx(weight / sum(weights), rel=0.1)


@needs_trace
def test_the_seed_picks_the_dealing_and_the_times_stay():
    a, b, c = (load_azure(TRACE, models=80, seed=s) for s in (1, 1, 2))
    assert a == b
    assert [x.model for x in a.arrivals] != [x.model for x in c.arrivals]
    assert [x.time_s for x in a.arrivals] == [x.time_s for x in c.arrivals]
    assert len(a.models) == 80 and a.name != c.name


@needs_trace
def test_a_window_holds_the_same_requests_as_the_whole_trace_and_can_be_sped_up():
    whole = load_azure(TRACE, models=16, seed=3)
    inside = [a for a in whole.arrivals if 600 <= a.time_s < 1200]
    w = load_azure(TRACE, models=16, seed=3, window=(600, 600))
    assert [(a.model, a.input_tokens, a.output_tokens) for a in w.arrivals] == [
        (a.model, a.input_tokens, a.output_tokens) for a in inside
    ]
    assert [a.time_s for a in w.arrivals] == pytest.approx([a.time_s - 600 for a in inside])
    fast = load_azure(TRACE, models=16, seed=3, window=(600, 600), rate_scale=4)
    assert [a.time_s for a in fast.arrivals] == pytest.approx([a.time_s / 4 for a in w.arrivals])
    at_10 = load_azure(TRACE, models=16, seed=3, window=(600, 600), rate_rps=10)
    natural = len(inside) / 600  # ~2.6 requests/s
    assert [a.time_s for a in at_10.arrivals] == pytest.approx([a.time_s * natural / 10 for a in w.arrivals])


def write(tmp_path, text):
    path = tmp_path / "trace.csv"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "text, problem",
    [
        (HEADER + "2023-11-16 18:17:03.98,10,0\n", "line 2: GeneratedTokens is 0; it must be at least 1"),
        (HEADER + "2023-11-16 18:17:03.98,ten,5\n", "line 2: ContextTokens 'ten' is not a whole number"),
        (HEADER + "yesterday,10,5\n", "line 2: TIMESTAMP 'yesterday' is not a time such as 2023-11-16 18:17:03.97996"),
        (HEADER + "2023-11-16 25:17:03.98,10,5\n", "line 2: TIMESTAMP '2023-11-16 25:17:03.98' is not a time"),
        (HEADER + "2023-11-16 18:17:03.98,10\n", "line 2: 2 fields, expected 3"),
        ("TIMESTAMP,ContextTokens\n", "header lacks column(s) GeneratedTokens"),
        (HEADER, "has a header but no request"),
    ],
)
def test_a_bad_trace_is_named_with_its_line(tmp_path, text, problem):
    with pytest.raises(SimError, match=re.escape(problem)):
        load_azure(write(tmp_path, text))


def test_requests_across_midnight_keep_their_order(tmp_path):
    path = write(tmp_path, HEADER + "2023-11-16 23:59:59.5,10,5\r\n2023-11-17 00:00:00.25,20,6\r\n")
    w = load_azure(path, models=1)
    assert [(a.time_s, a.input_tokens) for a in w.arrivals] == [(0.0, 10), (0.75, 20)]


@needs_trace
@pytest.mark.parametrize(
    "kwargs, problem",
    [
        ({"models": 0}, "at least 1 model"),
        ({"zipf": -0.5}, "zipf exponent must be >= 0"),
        ({"window": (4000, 60)}, "no request in the window 4000s+60s; the trace spans 3436 s"),
        ({"window": (0, 0)}, "a window lasts more than 0 s"),
        ({"rate_scale": 0}, "the rate scale must be positive"),
        ({"rate_scale": 2, "rate_rps": 3}, "not both"),
        ({"seed": -1}, "the seed must be a whole number >= 0, got -1"),
    ],
)
def test_bad_settings_are_named(kwargs, problem):
    with pytest.raises(SimError, match=re.escape(problem)):
        load_azure(TRACE, **kwargs)


def test_a_missing_trace_is_named(tmp_path):
    with pytest.raises(SimError, match="nope.csv does not exist"):
        load_azure(tmp_path / "nope.csv")
