import pytest

from services.sim.cost import ARCHITECTURES, GPU_PROFILES, CostModel, gpu_profile
from services.sim.errors import SimError

PAPER_MODELS = ("qwen2.5-7b", "yi-1.5-9b", "llama-2-13b")


def test_model_sizes_are_the_published_ones():
    gb = {name: ARCHITECTURES[name].weight_bytes() / 1e9 for name in PAPER_MODELS}
    assert gb == pytest.approx({"qwen2.5-7b": 15.23, "yi-1.5-9b": 17.66, "llama-2-13b": 26.03}, abs=0.01)
    kv = {name: ARCHITECTURES[name].kv_bytes_per_token() for name in PAPER_MODELS}
    assert kv == {"qwen2.5-7b": 57344, "yi-1.5-9b": 98304, "llama-2-13b": 819200}


def test_our_models_count_the_parameters_tokenpool_models_list_reports():
    params = {name: ARCHITECTURES[name].params() for name in ARCHITECTURES if name not in PAPER_MODELS}
    assert params == {
        "smollm2-135m-instruct": 134515008,
        "demo-llama": 15599872,
        "demo-qwen2": 34686464,
        "demo-mistral": 26477824,
    }


def test_every_gpu_of_the_profiles_is_known_with_its_datasheet_memory_and_link():
    assert set(GPU_PROFILES) == {"H100", "H800", "H20", "A100"}
    memory = {name: p.memory_bytes / 1e9 for name, p in GPU_PROFILES.items()}
    assert memory == {"H100": 80, "H800": 80, "H20": 96, "A100": 80}
    assert gpu_profile("h20").memory_bandwidth_bytes_s > gpu_profile("H100").memory_bandwidth_bytes_s
    # PCIe Gen4 on the A100: a switch takes twice as long as on the Gen5 Hoppers
    assert gpu_profile("A100").host_to_device_bytes_s == gpu_profile("H100").host_to_device_bytes_s / 2
    for profile in GPU_PROFILES.values():
        assert set(profile.fits) == set(PAPER_MODELS)


def test_an_unknown_gpu_is_refused_with_the_known_ones():
    with pytest.raises(SimError, match=r"unknown GPU profile 'B200'.*H100, H800, H20, A100.*engine:PATH"):
        gpu_profile("B200")
    with pytest.raises(SimError, match="H100 has no step-time fit for 'demo-llama'"):
        CostModel.for_models("H100", {"m": "demo-llama"})


def test_the_cost_model_prices_steps_and_copies_from_the_h100_profile():
    cost = CostModel.for_models("H100", {"m": "qwen2.5-7b"})
    assert cost.copy_in_s(50 * 10**9) == pytest.approx(1.0)  # 50 GB/s pinned PCIe Gen5
    one = cost.decode_step_s("m", 1, 1000)
    assert cost.decode_step_s("m", 2, 1000) > one and cost.decode_step_s("m", 1, 2000) > one
    assert 0.008 < one < 0.011  # the measured ~9 ms of Qwen2.5-7B on an H100 at batch 1
    # the KV read of every cached token is at least the roofline
    assert cost.models["m"].decode_per_context_token_s >= 57344 / gpu_profile("H100").memory_bandwidth_bytes_s
    assert cost.prefill_step_s("m", 2048) == pytest.approx(0.04816, rel=0.05)  # i2048b1 in the profiles


def test_a_short_prefill_costs_a_read_of_the_weights_and_attention_grows_with_prompt_length():
    cost = CostModel.for_models("H100", {"m": "llama-2-13b"})
    floor = cost.models["m"].steps.prefill_floor_s
    assert cost.prefill_step_s("m", 1) == cost.prefill_step_s("m", 16) == floor
    one_long = cost.prefill_step_s("m", 4096)  # one 4096-token prompt
    sixteen_short = cost.prefill_step_s("m", 4096, squared_tokens=16 * 256**2)
    assert one_long > sixteen_short * 1.04  # profiles: 196.8 ms (i4096b2 under the cap) vs 170.0 ms (i256b16)


def test_on_an_h20_a_decode_batch_of_65_costs_a_step_more_than_64():
    cost = CostModel.for_models("H20", {"m": "llama-2-13b"})
    step_64, step_65 = cost.decode_step_s("m", 64, 64 * 32), cost.decode_step_s("m", 65, 65 * 32)
    assert step_65 - step_64 > 0.015  # profiles: 30.4 ms at i32b60, 46.1 ms at i32b70


def test_the_same_model_is_slower_on_an_a100_than_on_an_h100():
    for arch in PAPER_MODELS:
        h100, a100 = (CostModel.for_models(g, {"m": arch}) for g in ("H100", "A100"))
        assert a100.decode_step_s("m", 16, 16 * 1000) > h100.decode_step_s("m", 16, 16 * 1000)
        assert a100.prefill_step_s("m", 2048) > h100.prefill_step_s("m", 2048)
