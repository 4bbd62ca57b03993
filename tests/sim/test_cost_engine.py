"""Engine cost profiles: measured on our engine, fitted, written, read back, and simulated with."""

import json
from pathlib import Path

import pytest

from services.gpu_worker.engine.bench_cost import CostBenchConfig, measure
from services.sim import cost_engine
from services.sim.cost import CostModel, gpu_profile
from services.sim.cost_steps import StepFit
from services.sim.errors import SimError
from services.sim.run import SimConfig, simulate
from services.sim.workload import Arrival, make_workload

RESULTS = Path(__file__).resolve().parents[2] / "bench/results"
COMMITTED = sorted(RESULTS.glob("engine-cost-cpu-*.json"))[-1]
OUR_MODELS = ("smollm2-135m-instruct", "demo-llama", "demo-qwen2", "demo-mistral")


def synthetic_points(a=0.010, b=0.002, c=1e-6, p0=0.005, p1=1e-4) -> dict:
    decode = [
        {"batch": n, "context_tokens": n * ctx, "s": a + b * n + c * n * ctx} for n in (1, 2, 4, 8) for ctx in (16, 128)
    ]
    prefill = [
        {"prompts": k, "tokens": k * t, "squared_tokens": k * t * t, "s": p0 + p1 * k * t}
        for k, t in ((1, 8), (1, 32), (1, 128), (4, 32))
    ]
    return {"weight_bytes": 10**8, "kv_bytes_per_token": 4096, "decode_points": decode, "prefill_points": prefill}


def write_profile(tmp_path: Path, switches=((10**8, 0.012), (4 * 10**8, 0.042))) -> Path:
    measured = {}
    for i, (size, switch_s) in enumerate(switches):
        measured[f"m{i}"] = {
            **synthetic_points(),
            "weight_bytes": size,
            "switch_s": switch_s,
            "switch_runs_s": [switch_s],
        }
    profile = cost_engine.build_profile(measured, copy_gb_s=20.0, read_gb_s=30.0, machine={"device": "cpu"}, config={})
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(profile))
    return path


def test_the_fit_recovers_the_step_times_it_was_measured_from():
    fit, decode_quality, prefill_quality = cost_engine.fit_model(synthetic_points())
    assert fit.decode_per_context_token_s == pytest.approx(1e-6, rel=1e-3)
    assert fit.prefill_fixed_s == pytest.approx(0.005, rel=1e-3) and fit.prefill_per_token_s == pytest.approx(
        1e-4, rel=1e-3
    )
    assert [b for b, _ in fit.decode_batch_table] == [1, 2, 4, 8]
    assert fit.decode_s(3, 300) == pytest.approx(0.010 + 0.002 * 3 + 1e-6 * 300, rel=1e-3)  # between table entries
    assert fit.decode_s(16, 0) == pytest.approx(0.010 + 0.002 * 16, rel=1e-3)  # beyond: slope b
    assert decode_quality.max_rel_err < 0.001 and prefill_quality.max_rel_err < 0.001


def test_a_batch_table_prices_a_cpus_slow_small_batches():
    fit = StepFit(0.01, 0.001, 0.0, 0.0, 0.0, decode_batch_table=((1, 0.010), (2, 0.018), (4, 0.015)))
    assert fit.decode_s(2, 0) == 0.018 and fit.decode_s(3, 0) == pytest.approx(0.0165)
    assert fit.decode_s(4, 0) < fit.decode_s(2, 0)
    assert fit.decode_s(6, 0) == pytest.approx(0.017)


def test_switch_time_is_fitted_as_a_fixed_cost_plus_bytes_over_bandwidth(tmp_path):
    profile = cost_engine.load_engine_profile(write_profile(tmp_path))
    assert profile.host_to_device_bytes_s == pytest.approx(1e10, rel=1e-3)  # 3e8 more bytes took 30 ms more
    assert profile.switch_fixed_s == pytest.approx(0.002, rel=1e-3)
    one_size = cost_engine.load_engine_profile(write_profile(tmp_path, switches=((10**8, 0.012),)))
    assert one_size.host_to_device_bytes_s == 20e9  # the copy limit, and what the switch took beyond it
    assert one_size.switch_fixed_s == pytest.approx(0.012 - 10**8 / 20e9)


def test_an_engine_profile_prices_models_named_by_their_own_names(tmp_path):
    path = write_profile(tmp_path)
    cost = CostModel.for_models(f"engine:{path}", {"a": "m0", "b": "m1"})
    assert cost.weight_bytes("b") == 4 * 10**8 and cost.kv_bytes_per_token("a") == 4096
    assert cost.decode_step_s("a", 4, 400) == pytest.approx(0.010 + 0.008 + 0.0004, rel=1e-3)
    assert cost.copy_in_s(10**10) == pytest.approx(1.0, rel=1e-3)
    assert gpu_profile(f"engine:{path}").name == "engine:cpu"
    with pytest.raises(SimError, match="measured no model 'demo-llama' \\(it measured: m0, m1\\)"):
        CostModel.for_models(f"engine:{path}", {"x": "demo-llama"})


def test_a_missing_or_foreign_profile_is_refused_with_what_to_do(tmp_path):
    with pytest.raises(SimError, match="python -m services.sim.cost_engine measure --out"):
        gpu_profile(f"engine:{tmp_path}/none.json")
    (tmp_path / "other.json").write_text(json.dumps({"bench": "engine"}))
    with pytest.raises(SimError, match="is not an engine cost profile"):
        gpu_profile(f"engine:{tmp_path}/other.json")


def test_the_committed_cpu_profile_holds_our_models_and_its_fits_are_those_of_its_points():
    data = json.loads(COMMITTED.read_text())
    profile = cost_engine.load_engine_profile(COMMITTED)
    assert set(profile.models) == set(OUR_MODELS)
    for name, raw in data["models"].items():
        fit, dq, pq = cost_engine.fit_model(raw)
        assert profile.models[name].fit == fit
        assert dq.median_rel_err <= 0.08 and pq.median_rel_err <= 0.10, name
    assert profile.switch_fixed_s >= 0 and 1e9 < profile.host_to_device_bytes_s < 1e11


def test_a_workload_of_our_models_simulates_with_the_committed_profile():
    arrivals = [Arrival(0.5 * i, OUR_MODELS[i % 4], 30, 16) for i in range(12)]
    workload = make_workload("ours", arrivals, {m: m for m in OUR_MODELS})
    result = simulate(workload, SimConfig(gpu_profile=f"engine:{COMMITTED}", ttft_s=1.5, tbt_s=0.3)).summary()
    assert result["gpu_profile"] == "engine:cpu" and result["completed"] == 12 and result["anomalies"] == 0
    assert result["attainment"] > 0.5


def test_measuring_a_model_on_the_engine_gives_a_profile_the_simulator_reads(model_store, tmp_path):
    cfg = CostBenchConfig(
        decode_grid=((1, 8), (2, 8), (4, 8)), prefill_grid=((1, 8), (2, 8)), decode_steps=2, repeats=1, rounds=1
    )
    measured = measure(cfg, {"demo-llama": model_store.path("demo-llama")})
    points = measured["demo-llama"]
    assert [p["batch"] for p in points["decode_points"]] == [1, 2, 4]
    assert all(p["s"] > 0 for p in points["decode_points"] + points["prefill_points"])
    assert points["weight_bytes"] == 62399488 and points["switch_s"] > 0
    path = tmp_path / "p.json"
    path.write_text(json.dumps(cost_engine.build_profile(measured, 10.0, 10.0, {"device": "cpu"}, {})))
    cost = CostModel.for_models(f"engine:{path}", {"demo-llama": "demo-llama"})
    assert cost.decode_step_s("demo-llama", 1, 9) > 0
