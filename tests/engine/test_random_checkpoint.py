"""Random-weight checkpoints (for timing where only a model's config and tokenizer can travel):
both our engine and transformers load them, and greedy decoding agrees."""

import json

import pytest
import torch

from services.gpu_worker.engine.engine import Engine
from services.gpu_worker.engine.generate import run_to_completion
from services.gpu_worker.engine.random_checkpoint import write_random_checkpoint
from services.gpu_worker.engine.sequence import EngineRequest, SamplingParams

from .conftest import small_config

NEW_TOKENS = 12


@pytest.mark.parametrize("model", ["demo-llama", "demo-qwen2"])
def test_a_random_checkpoint_of_a_models_config_decodes_alike_in_our_engine_and_transformers(
    model_store, prompt_ids, tmp_path, model
):
    from transformers import AutoModelForCausalLM

    source = model_store.path(model)
    path = write_random_checkpoint(source, tmp_path / model, dtype=torch.float32, seed=1)

    assert json.loads((path / "config.json").read_text()) == json.loads((source / "config.json").read_text())
    assert (path / "tokenizer.json").read_bytes() == (source / "tokenizer.json").read_bytes()
    assert not (path / "prepared.json").exists()
    engine = Engine(small_config(), {model: path})
    try:
        prompts = prompt_ids[:3]
        greedy = SamplingParams(max_tokens=NEW_TOKENS, temperature=0)
        done = run_to_completion(engine, [EngineRequest(f"r{i}", model, ids, greedy) for i, ids in enumerate(prompts)])
        ours = [done[f"r{i}"].token_ids for i in range(len(prompts))]
    finally:
        engine.close()
    hf = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    with torch.inference_mode():
        theirs = [
            hf.generate(torch.tensor([ids]), max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False,
                        eos_token_id=None, pad_token_id=0)[0, len(ids):].tolist()
            for ids in prompts
        ]
    original = Engine(small_config(), {model: source})
    try:
        first = run_to_completion(original, [EngineRequest("o", model, prompts[0], greedy)])["o"].token_ids
    finally:
        original.close()

    assert ours == theirs
    assert ours[0] != first, "the weights are the source's, not random"


def test_a_large_config_is_written_in_shards_with_an_index(model_store, tmp_path, monkeypatch):
    from services.gpu_worker.engine import random_checkpoint

    monkeypatch.setattr(random_checkpoint, "SHARD_BYTES", 4 << 20)
    path = write_random_checkpoint(model_store.path("demo-llama"), tmp_path / "sharded")
    index = json.loads((path / "model.safetensors.index.json").read_text())
    files = set(index["weight_map"].values())

    assert len(files) > 1 and all((path / f).is_file() for f in files)
    assert not (path / "model.safetensors").exists()
    engine = Engine(small_config(), {"sharded": path})
    try:
        engine.activate("sharded")
    finally:
        engine.close()
