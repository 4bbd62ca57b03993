"""What every workload shares (the size mix, cutting, rescaling), the paper's CSVs and synthetic markets."""

import re
import statistics
from collections import Counter
from pathlib import Path

import pytest

from services.sim.errors import SimError
from services.sim.workload import Arrival, cut, load_csv, make_workload, size_mix, synthetic

WORKLOADS = Path(__file__).resolve().parents[2] / "../shared/data/aegaeon/workloads"
PAPER_8 = WORKLOADS / "synth-8-0.1-1.0-1.0.csv"
needs_paper = pytest.mark.skipif(not PAPER_8.exists(), reason="the paper's workloads are not in ../shared/data")


def test_models_map_onto_a_6_2_2_mix_of_7b_9b_13b_in_name_order():
    mix = size_mix(f"synth_model_{i:02d}" for i in range(20))
    assert Counter(mix.values()) == {"qwen2.5-7b": 12, "yi-1.5-9b": 4, "llama-2-13b": 4}
    assert list(mix)[:3] == ["synth_model_00", "synth_model_01", "synth_model_02"]
    eight = Counter(size_mix(f"m{i}" for i in range(8)).values())
    assert eight == {"qwen2.5-7b": 5, "yi-1.5-9b": 2, "llama-2-13b": 1}  # small markets get every size


@needs_paper
def test_a_paper_csv_loads_in_time_order():
    w = load_csv(PAPER_8)
    assert len(w.arrivals) == 81 and len(w.models) == 8
    first = w.arrivals[0]
    assert (first.time_s, first.model, first.input_tokens, first.output_tokens) == (3.071, "synth_model_01", 619, 503)
    assert all(a.time_s <= b.time_s for a, b in zip(w.arrivals, w.arrivals[1:]))


@needs_paper
def test_a_window_of_a_paper_csv_starts_at_zero_and_can_be_replayed_faster():
    whole = load_csv(PAPER_8)
    inside = [a for a in whole.arrivals if 30 <= a.time_s < 90]
    w = load_csv(PAPER_8, window=(30, 60))
    assert [(a.model, a.input_tokens, a.output_tokens) for a in w.arrivals] == [
        (a.model, a.input_tokens, a.output_tokens) for a in inside
    ]
    assert [a.time_s for a in w.arrivals] == pytest.approx([a.time_s - 30 for a in inside])
    assert w.models == whole.models  # the market stays whole
    twice = load_csv(PAPER_8, window=(30, 60), rate_scale=2)
    assert [a.time_s for a in twice.arrivals] == pytest.approx([a.time_s / 2 for a in w.arrivals])
    at_2rps = load_csv(PAPER_8, window=(30, 60), rate_rps=2.0)
    natural = len(inside) / 60
    assert [a.time_s for a in at_2rps.arrivals] == pytest.approx([a.time_s * natural / 2 for a in w.arrivals])


def test_cut_keeps_the_first_requests_and_refuses_an_empty_window():
    w = make_workload("w", [Arrival(float(i), f"m{i % 3}", 10, 10) for i in range(10)])
    assert [a.time_s for a in cut(w, max_requests=4).arrivals] == [0, 1, 2, 3]
    assert [a.time_s for a in cut(w, (2.5, None), 2).arrivals] == [0.5, 1.5]
    with pytest.raises(SimError, match="no request in the window 20s"):
        cut(w, (20, 5))


def test_synthetic_workloads_are_reproducible_and_zipf_popular():
    a = synthetic(models=10, rate_rps=5, duration_s=200, zipf=1.2, seed=3)
    assert a == synthetic(models=10, rate_rps=5, duration_s=200, zipf=1.2, seed=3)
    assert a != synthetic(models=10, rate_rps=5, duration_s=200, zipf=1.2, seed=4)
    counts = Counter(x.model for x in a.arrivals)
    assert counts["model_00"] > 3 * counts["model_09"]
    assert 700 < len(a.arrivals) < 1300  # ~1000 expected


def _gap_cv(workload):
    times = [a.time_s for a in workload.arrivals]
    gaps = [b - a for a, b in zip(times, times[1:])]
    return statistics.pstdev(gaps) / statistics.mean(gaps)


def test_synthetic_gamma_arrivals_are_as_bursty_as_asked_at_the_same_mean_rate():
    poisson = synthetic(models=4, rate_rps=20, duration_s=1000, seed=1)
    bursty = synthetic(models=4, rate_rps=20, duration_s=1000, seed=1, cv=3.0)
    assert len(poisson.arrivals) == pytest.approx(20_000, rel=0.03)
    assert len(bursty.arrivals) == pytest.approx(20_000, rel=0.1)
    assert _gap_cv(poisson) == pytest.approx(1.0, abs=0.05)
    assert _gap_cv(bursty) == pytest.approx(3.0, rel=0.15)
    assert "cv3" in bursty.name and "cv" not in poisson.name


@pytest.mark.parametrize(
    "kwargs, problem",
    [
        ({"models": 0}, "at least 1 model"),
        ({"zipf": -1}, "zipf exponent must be >= 0"),
        ({"cv": 0}, "coefficient of variation of the gaps must be positive"),
        ({"rate_rps": -1}, "must be positive"),
        ({"rate_rps": 0.001, "duration_s": 1}, "no request arrived"),
    ],
)
def test_bad_synthetic_settings_are_named(kwargs, problem):
    with pytest.raises(SimError, match=problem):
        synthetic(**kwargs)


@pytest.mark.parametrize(
    "text, problem",
    [
        ("Request Time,Model Name,Input Length,Output Length\n00:00:01,m0,abc,10\n", "line 2: Input Length 'abc'"),
        (
            "Request Time,Model Name,Input Length,Output Length\n-1,m0,10,10\n",
            "line 2: Request Time '-1' is not a time",
        ),
        ("Request Time,Model Name\n1,m0\n", "lacks column(s) Input Length, Output Length"),
        ("", "is empty; expected the header"),
        ("Request Time,Model Name,Input Length,Output Length\n", "has no requests"),
    ],
)
def test_a_bad_paper_csv_is_named(tmp_path, text, problem):
    path = tmp_path / "w.csv"
    path.write_text(text)
    with pytest.raises(SimError, match=re.escape(problem)):
        load_csv(path)


@needs_paper
def test_a_paper_csv_window_or_rate_that_cannot_be_is_refused():
    with pytest.raises(SimError, match="no request in the window 500s"):
        load_csv(PAPER_8, window=(500, 60))
    with pytest.raises(SimError, match="rate scale or a target rate, not both"):
        load_csv(PAPER_8, rate_scale=2, rate_rps=1)
    with pytest.raises(SimError, match="does not exist"):
        load_csv(WORKLOADS / "nope.csv")
