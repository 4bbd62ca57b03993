from collections import Counter
from pathlib import Path

import pytest

from services.sim.errors import SimError
from services.sim.workload import load_csv, size_mix, synthetic

WORKLOADS = Path(__file__).resolve().parents[2] / "../shared/data/aegaeon/workloads"


def test_models_map_onto_a_6_2_2_mix_of_7b_9b_13b_in_name_order():
    mix = size_mix(f"synth_model_{i:02d}" for i in range(20))
    assert Counter(mix.values()) == {"qwen2.5-7b": 12, "yi-1.5-9b": 4, "llama-2-13b": 4}
    assert list(mix)[:3] == ["synth_model_00", "synth_model_01", "synth_model_02"]
    eight = Counter(size_mix(f"m{i}" for i in range(8)).values())
    assert eight == {"qwen2.5-7b": 5, "yi-1.5-9b": 2, "llama-2-13b": 1}  # small markets get every size


@pytest.mark.skipif(not WORKLOADS.exists(), reason="the paper's workloads are not in ../shared/data")
def test_a_paper_csv_loads_in_time_order():
    w = load_csv(WORKLOADS / "synth-8-0.1-1.0-1.0.csv")
    assert len(w.arrivals) == 81 and len(w.models) == 8
    first = w.arrivals[0]
    assert (first.time_s, first.model, first.input_tokens, first.output_tokens) == (3.071, "synth_model_01", 619, 503)
    assert all(a.time_s <= b.time_s for a, b in zip(w.arrivals, w.arrivals[1:]))


def test_synthetic_workloads_are_reproducible_and_zipf_popular():
    a = synthetic(models=10, rate_rps=5, duration_s=200, zipf=1.2, seed=3)
    assert a == synthetic(models=10, rate_rps=5, duration_s=200, zipf=1.2, seed=3)
    counts = Counter(x.model for x in a.arrivals)
    assert counts["model_00"] > 3 * counts["model_09"]
    assert 700 < len(a.arrivals) < 1300  # ~1000 expected
    with pytest.raises(SimError, match="at least 1 model"):
        synthetic(models=0)
