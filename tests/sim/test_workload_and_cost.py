from collections import Counter
from pathlib import Path

import pytest

from services.sim.cost import ARCHITECTURES, CostModel, gpu_profile
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


def test_model_sizes_are_the_published_ones():
    gb = {name: arch.weight_bytes() / 1e9 for name, arch in ARCHITECTURES.items()}
    assert gb == pytest.approx({"qwen2.5-7b": 15.23, "yi-1.5-9b": 17.66, "llama-2-13b": 26.03}, abs=0.01)
    kv = {name: arch.kv_bytes_per_token() for name, arch in ARCHITECTURES.items()}
    assert kv == {"qwen2.5-7b": 57344, "yi-1.5-9b": 98304, "llama-2-13b": 819200}


def test_the_cost_model_prices_steps_and_copies_from_the_profile():
    cost = CostModel.for_models("H100", {"m": "qwen2.5-7b"})
    h100 = gpu_profile("h100")
    assert cost.copy_in_s(50 * 10**9) == pytest.approx(1.0)  # 50 GB/s pinned PCIe Gen5
    one = cost.decode_step_s("m", 1, 1000)
    assert cost.decode_step_s("m", 2, 1000) > one and cost.decode_step_s("m", 1, 2000) > one
    assert 0.008 < one < 0.011  # the measured ~9 ms of Qwen2.5-7B on an H100 at batch 1
    assert cost.models["m"].decode_per_context_token_s == pytest.approx(57344 / h100.memory_bandwidth_bytes_s)
    assert cost.prefill_step_s("m", 2048) == pytest.approx(0.0484, rel=0.1)  # i2048b1 in the profiles
