"""Bad input gets an error that names the problem; the engine keeps serving and loses no KV page."""

import shutil

import pytest

from services.gpu_worker.engine.engine import Engine
from services.gpu_worker.engine.errors import (
    CheckpointError,
    InvalidRequestError,
    OutOfMemoryError,
    UnknownModelError,
)
from services.gpu_worker.engine.generate import run_to_completion
from services.gpu_worker.engine.sequence import EngineRequest, SamplingParams

from .conftest import small_config

MODEL = "demo-llama"


def _still_serves(engine, prompt_ids):
    done = run_to_completion(engine, [EngineRequest("ok", MODEL, prompt_ids[0], SamplingParams(max_tokens=4, temperature=0))])
    assert len(done["ok"].token_ids) == 4
    stats = engine.stats()
    assert stats.free_pages == stats.total_pages
    assert stats.waiting == stats.running == stats.swapped == 0


@pytest.fixture
def busy_engine(engine, prompt_ids):
    """An engine with a request mid-decode, so errors are raised while it serves."""
    engine.activate(MODEL)
    engine.add_request(EngineRequest("busy", MODEL, prompt_ids[1], SamplingParams(max_tokens=8, temperature=0)))
    engine.step()
    return engine


@pytest.mark.parametrize(
    "params, names",
    [
        (dict(max_tokens=0), "max_tokens"),
        (dict(max_tokens=-3), "max_tokens"),
        (dict(temperature=-0.5), "temperature"),
        (dict(temperature=float("nan")), "temperature"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.5), "top_p"),
        (dict(top_k=-1), "top_k"),
        (dict(seed=-1), "seed"),
        (dict(stop=("",)), "stop"),
        (dict(stop_token_ids=(-2,)), "stop_token_ids"),
        (dict(top_logprobs=21), "top_logprobs"),
        (dict(top_logprobs=-1), "top_logprobs"),
        (dict(presence_penalty=2.5), "presence_penalty"),
        (dict(frequency_penalty=float("inf")), "frequency_penalty"),
        (dict(repetition_penalty=0.0), "repetition_penalty"),
        (dict(repetition_penalty=3.0), "repetition_penalty"),
        (dict(logit_bias=((5, 101.0),)), "logit_bias"),
        (dict(logit_bias=((5, 1.0), (5, 2.0))), "logit_bias"),
        (dict(logit_bias=((-1, 1.0),)), "logit_bias"),
    ],
)
def test_out_of_range_sampling_values_are_refused_by_name(busy_engine, prompt_ids, params, names):
    with pytest.raises(InvalidRequestError, match=names):
        busy_engine.add_request(EngineRequest("bad", MODEL, prompt_ids[0], SamplingParams(**params)))
    while busy_engine.has_work():
        busy_engine.step()
    _still_serves(busy_engine, prompt_ids)


def test_unknown_model_names_the_model_and_the_served_ones(busy_engine, prompt_ids):
    with pytest.raises(UnknownModelError, match=r"'no-such-model'.*demo-llama"):
        busy_engine.add_request(EngineRequest("bad", "no-such-model", prompt_ids[0]))
    with pytest.raises(UnknownModelError):
        busy_engine.activate("no-such-model")
    _drain_and_check(busy_engine, prompt_ids)


def test_prompt_longer_than_context_window(busy_engine):
    too_long = tuple([42] * 4096)  # demo-llama's window is 4096 tokens
    with pytest.raises(InvalidRequestError, match="4096 tokens.*context window of 4096"):
        busy_engine.add_request(EngineRequest("bad", MODEL, too_long))


def test_prompt_the_kv_cache_can_never_hold(model_store, prompt_ids):
    engine = Engine(small_config(kv_arena_bytes=2 << 20), {MODEL: model_store.path(MODEL)})
    block = engine.slot(MODEL).block_tokens
    with pytest.raises(InvalidRequestError, match="more than the KV cache can ever hold"):
        engine.add_request(EngineRequest("bad", MODEL, tuple([42] * (2 * block + 5))))
    _still_serves(engine, prompt_ids)


def test_empty_prompt_out_of_vocab_ids_and_duplicate_ids(busy_engine, prompt_ids):
    with pytest.raises(InvalidRequestError, match="prompt is empty"):
        busy_engine.add_request(EngineRequest("e", MODEL, ()))
    with pytest.raises(InvalidRequestError, match=r"outside the vocabulary \[0, 49152\)"):
        busy_engine.add_request(EngineRequest("v", MODEL, (1, 2, 10**6)))
    with pytest.raises(InvalidRequestError, match=r"logit_bias token ids \[49152\] are outside the vocabulary"):
        busy_engine.add_request(EngineRequest("b", MODEL, (1, 2), SamplingParams(logit_bias=((3, 1.0), (49152, 1.0)))))
    with pytest.raises(InvalidRequestError, match="resumed=2 must leave at least one prompt token"):
        busy_engine.add_request(EngineRequest("r", MODEL, (1, 2), resumed=2))
    with pytest.raises(InvalidRequestError, match="'busy' is already in use"):
        busy_engine.add_request(EngineRequest("busy", MODEL, prompt_ids[0]))
    _drain_and_check(busy_engine, prompt_ids)


def test_abort_returns_every_page(busy_engine, prompt_ids):
    busy_engine.add_request(EngineRequest("x", MODEL, prompt_ids[4], SamplingParams(max_tokens=50)))
    busy_engine.step()
    busy_engine.swap_out(request_ids=["busy"])
    assert busy_engine.abort("x") and busy_engine.abort("busy")
    assert not busy_engine.abort("never-existed")
    stats = busy_engine.stats()
    assert stats.free_pages == stats.total_pages and stats.free_host_pages == stats.total_host_pages
    _still_serves(busy_engine, prompt_ids)


def _drain_and_check(engine, prompt_ids):
    while engine.has_work():
        engine.step()
    _still_serves(engine, prompt_ids)


def _copy_model(model_store, tmp_path, name="demo-qwen2"):
    dest = tmp_path / name
    shutil.copytree(model_store.path(name), dest)
    return dest


def test_missing_safetensors_file(model_store, tmp_path, prompt_ids):
    broken = _copy_model(model_store, tmp_path)
    (broken / "model.safetensors").unlink()
    engine = Engine(small_config(), {"broken": broken, MODEL: model_store.path(MODEL)})
    with pytest.raises(CheckpointError, match=r"no \*\.safetensors file found"):
        engine.activate("broken")
    _still_serves(engine, prompt_ids)


@pytest.mark.parametrize("damage", ["truncate", "garbage_header", "garbage_body"])
def test_corrupted_safetensors_file(model_store, tmp_path, prompt_ids, damage):
    broken = _copy_model(model_store, tmp_path)
    weights = broken / "model.safetensors"
    data = weights.read_bytes()
    if damage == "truncate":
        weights.write_bytes(data[: len(data) // 2])
    elif damage == "garbage_header":
        weights.write_bytes(data[:8] + b"{not json" + data[17:])
    else:
        weights.write_bytes(data[:16] + b"\xff" * 64)  # header cut short
    engine = Engine(small_config(), {"broken": broken, MODEL: model_store.path(MODEL)})
    with pytest.raises(CheckpointError, match="model.safetensors"):
        engine.activate("broken")
    assert engine.active is None
    _still_serves(engine, prompt_ids)


def test_checkpoint_with_wrong_shapes(model_store, tmp_path, prompt_ids):
    import json

    broken = _copy_model(model_store, tmp_path)
    config = json.loads((broken / "config.json").read_text())
    config["intermediate_size"] += 8
    (broken / "config.json").write_text(json.dumps(config))
    engine = Engine(small_config(), {"broken": broken, MODEL: model_store.path(MODEL)})
    with pytest.raises(CheckpointError, match=r"mlp\.\w+_proj\.weight has shape .* config.json implies"):
        engine.activate("broken")
    _still_serves(engine, prompt_ids)


def test_weight_arena_too_small_says_which_setting_to_raise(model_store):
    engine = Engine(small_config(weight_arena_bytes=64 << 20), {"smollm2-135m-instruct": model_store.path("smollm2-135m-instruct")})
    with pytest.raises(OutOfMemoryError, match="raise weight_arena_bytes"):
        engine.activate("smollm2-135m-instruct")


def test_engine_config_values_are_checked():
    from services.gpu_worker.engine.config import EngineConfig

    with pytest.raises(ValueError, match="kv_page_bytes"):
        EngineConfig(kv_page_bytes=0)
    with pytest.raises(ValueError, match="max_batch_tokens"):
        EngineConfig(max_batch_tokens=0)


def test_generation_that_outgrows_the_whole_kv_cache_ends_with_length(model_store, prompt_ids):
    engine = Engine(small_config(kv_arena_bytes=2 << 20), {MODEL: model_store.path(MODEL)})
    capacity = engine.arena.num_pages * engine.slot(MODEL).block_tokens
    params = SamplingParams(max_tokens=capacity * 2, temperature=0, ignore_eos=True)
    done = run_to_completion(engine, [EngineRequest("long", MODEL, prompt_ids[0], params)])
    assert done["long"].finish_reason == "length"
    assert len(prompt_ids[0]) + len(done["long"].token_ids) == capacity
    assert engine.stats().free_pages == engine.stats().total_pages
